"""lightning-prune: train, prune and retrain with PyTorch Lightning; oracle-pruning studies; DyCoke for video LLMs."""

__version__ = "0.1.0"
