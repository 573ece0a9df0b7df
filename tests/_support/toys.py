"""The small CNN and the user-written LightningModule that the callback and distributed tests prune."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune.pruning import restore_pruning


class SmallCNN(nn.Module):
    """conv1(1->6)[+BN] -> pool -> conv2(6->4) -> global pool -> fc(4->3); input [B, 1, 8, 8].

    Args:
        batch_norm: Whether `bn1` follows `conv1` (without it the network has no BatchNorm at all, as the DDP fits
            want: their global batches then match at any world size).
    """

    def __init__(self, batch_norm: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        if batch_norm:  # no placeholder module otherwise: the module tree is exactly conv1, conv2, fc
            self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if hasattr(self, "bn1"):
            x = self.bn1(x)
        x = F.max_pool2d(F.relu(x), 2)
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv2(x)), 1).flatten(1))


class UserModule(L.LightningModule):
    """What a user writes: a network attribute, steps that log val/acc, val/loss, train/loss, a retrain switch.

    Args:
        pretrain_lr: SGD learning rate before pruning.
        retrain_lr: SGD learning rate after `start_retrain()`.
        batch_norm: Whether the network has `bn1` (:class:`SmallCNN`).
        weight_decay: SGD weight decay.
        step_lr: Halve the learning rate every epoch (`StepLR`).
        sync_dist: Reduce the logged metrics over the DDP ranks.
    """

    def __init__(self, pretrain_lr: float = 0.1, retrain_lr: float = 0.02, batch_norm: bool = True,
                 weight_decay: float = 1e-4, step_lr: bool = True, sync_dist: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.model = SmallCNN(batch_norm)
        self.phase = "pretrain"

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, sync_dist=self.hparams.sync_dist)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val/loss", F.cross_entropy(logits, y), sync_dist=self.hparams.sync_dist)
        self.log("val/acc", (logits.argmax(1) == y).float().mean(), sync_dist=self.hparams.sync_dist)

    def start_retrain(self):
        self.phase = "retrain"

    def configure_optimizers(self):
        lr = self.hparams.pretrain_lr if self.phase == "pretrain" else self.hparams.retrain_lr
        optimizer = torch.optim.SGD(self.parameters(), lr=lr, momentum=0.9, weight_decay=self.hparams.weight_decay)
        if not self.hparams.step_lr:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)}

    def on_load_checkpoint(self, checkpoint):
        restore_pruning(self, checkpoint)
