"""lightning-prune: train, prune and retrain with PyTorch Lightning; oracle-pruning studies; DyCoke for video LLMs."""

from lightning_prune._lazy import lazy_getattr

__version__ = "0.1.0"

# Imported on first use, so that `import lightning_prune` stays light.
_LAZY = {"load_pruned": "lightning_prune.pruning.checkpoint"}

__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
