"""The seed every retraining starts from, whatever consumed random numbers before it."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from typing_extensions import override


class SeedAtTrainStart(Callback):
    """Reseeds the global RNGs when training starts, so that both paths (one at a time, batched) retrain from the
    same random state whatever consumed it before (building and loading the model, criteria, measuring)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        seed_everything(self.seed, verbose=False)
