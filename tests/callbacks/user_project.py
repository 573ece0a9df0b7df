"""A Lightning project written without this package in mind, in the style of the widely used hydra template.

Its module holds the network as `net` (passed to `__init__` and saved with `save_hyperparameters()`, along with a
`functools.partial` optimizer), logs `train_loss`, `val_loss`, `val_acc`, `test_loss`, `test_acc`, builds its
optimizer over `self.trainer.model.parameters()` and steps a `ReduceLROnPlateau` on `val_loss`. It has no pruning
hook of any kind: only the `Pruning` callback is added to its Trainer.
"""

from __future__ import annotations

import functools

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class DenseNet(nn.Module):
    """The template's `SimpleDenseNet`, small: Linear-BN-ReLU twice, then a classifier."""

    def __init__(self, inputs: int = 16, hidden: int = 16, classes: int = 4) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(inputs, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class UserLitModule(L.LightningModule):
    def __init__(self, net: nn.Module, optimizer=None, compile: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()  # holds the network and the optimizer partial, as the template does
        self.net = torch.compile(net, backend="eager") if compile else net
        self.optimizer = optimizer or functools.partial(torch.optim.Adam, lr=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch, stage: str):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True)
        self.log(f"{stage}_acc", (logits.argmax(1) == y).float().mean(), on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        optimizer = self.optimizer(params=self.trainer.model.parameters())
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss"}}


def blobs(seed: int, size: int, inputs: int = 16, classes: int = 4) -> TensorDataset:
    """Gaussian blobs, one per class (the same centres for every split)."""
    centres = torch.randn(classes, inputs, generator=torch.Generator().manual_seed(123)) * 1.5
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (size,), generator=generator)
    return TensorDataset(centres[labels] + torch.randn(size, inputs, generator=generator), labels)


class UserDataModule(L.LightningDataModule):
    """Train / val / test splits that differ; no `train_eval_dataloader()`."""

    def __init__(self, batch_size: int = 32) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.train, self.val, self.test = blobs(0, 128), blobs(1, 64), blobs(2, 64)

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(0))  # fmt: skip

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.test, batch_size=self.batch_size)
