"""`ImageClassifier`: a network from the model registry, cross-entropy, accuracy, and two training recipes.

The two recipes are the pretrain and retrain phases of a prune pipeline. `configure_optimizers` builds a *fresh*
optimizer and schedule over the module's current parameters every time it is called, because structured pruning
replaces parameter objects: an optimizer built before pruning would silently train nothing of the pruned layers.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lightning_prune.models import build_model
from lightning_prune.modules.two_phase import TwoPhaseModule


def _sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.01, momentum=0.9)


class ImageClassifier(TwoPhaseModule):
    """Image classification with separate pretrain and retrain recipes.

    Args:
        model: Name of a network in `lightning_prune.models` (see `available_models()`).
        model_kwargs: Keyword arguments for the network builder, e.g. `{"num_classes": 100}`.
        optimizer: Pretrain optimizer, called with the current parameters.
        lr_scheduler: Pretrain learning-rate schedule (stepped once per epoch), or None for a constant rate.
        retrain_optimizer: Retrain optimizer; None reuses `optimizer`.
        retrain_lr_scheduler: Retrain schedule; None reuses `lr_scheduler` when `retrain_optimizer` is None too,
            otherwise a constant rate.
        label_smoothing: Label smoothing of the cross-entropy loss, in [0, 1).
        input_shape: Shape of one input `[C, H, W]`; None takes the network's `input_shape` attribute if it has one.
    """

    def __init__(
        self,
        model: str = "lenet5_mini",
        model_kwargs: dict[str, Any] | None = None,
        optimizer: OptimizerCallable = _sgd,
        lr_scheduler: LRSchedulerCallable | None = None,
        retrain_optimizer: OptimizerCallable | None = None,
        retrain_lr_scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        input_shape: list[int] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing}.")
        model_kwargs = dict(model_kwargs or {})
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "retrain_optimizer", "retrain_lr_scheduler"])
        self.model: nn.Module = build_model(model, **model_kwargs)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self._set_recipes(optimizer, lr_scheduler, retrain_optimizer, retrain_lr_scheduler)
        num_classes = self._num_classes()
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        shape = tuple(input_shape) if input_shape is not None else getattr(self.model, "input_shape", None)
        if shape is not None:
            self.example_input_array = torch.zeros(1, *shape)

    def _num_classes(self) -> int:
        last_linear = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
        if not last_linear:
            raise ValueError(f"`model` {self.hparams.model!r} has no nn.Linear output layer to read num_classes from.")
        return last_linear[-1].out_features

    @override
    def setup(self, stage: str) -> None:
        self._batch_checked = False
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        classes = getattr(datamodule, "num_classes", None)
        if isinstance(classes, int) and classes != self._num_classes():
            raise ValueError(
                f"`model` {self._described()} must output one logit per class of the data, got "
                f"{self._num_classes()} outputs for {type(datamodule).__name__}'s {classes} classes. Set "
                f"`model_kwargs: {{num_classes: {classes}}}` (or use data with {self._num_classes()} classes)."
            )

    def _described(self) -> str:
        kwargs = self.hparams.get("model_kwargs") or {}
        return f"{self.hparams.model!r}" + (f" with {kwargs}" if kwargs else "")

    def _check_batch(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Once, at the first batch: the images have the network's channels, the labels fit its outputs."""
        if getattr(self, "_batch_checked", False):
            return
        self._batch_checked = True
        data = type(getattr(self.trainer, "datamodule", None) or x).__name__ if self._trainer is not None else "data"
        convs = [m for m in self.model.modules() if isinstance(m, nn.Conv2d)]
        expected = self.example_input_array.shape[1] if isinstance(self.example_input_array, torch.Tensor) else (
            convs[0].in_channels if convs else None)
        if expected is not None and x.dim() == 4 and x.shape[1] != expected:
            raise ValueError(
                f"`model` {self._described()} must get images of {expected} channels, got a batch "
                f"{list(x.shape)} of {x.shape[1]} from {data}. Use data with {expected} channels or a network for "
                f"{x.shape[1]} (e.g. `model_kwargs: {{in_channels: {x.shape[1]}}}` where the network takes it)."
            )
        classes = self._num_classes()
        if y is not None and y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
            raise ValueError(
                f"`model` {self._described()} must get labels in [0, {classes}), got "
                f"{int(y.max()) if int(y.max()) >= classes else int(y.min())} from {data}. Set `model_kwargs: "
                "{num_classes: N}` to the data's class count, or fix the labels."
            )

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits `[B, num_classes]` of images `[B, C, H, W]`."""
        return self.model(x)

    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, accuracy: MulticlassAccuracy):
        x, y = batch
        self._check_batch(x, y)
        logits = self(x)
        loss = self.loss_fn(logits, y)
        accuracy.update(logits, y)  # forward() would also compute a per-batch value nobody reads
        # Epoch means only: per-step logging costs throughput and the study reads epoch values.
        # sync_dist: under DDP every rank logs (and the Pruning callback reads) the same all-rank mean.
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    @override
    def on_train_epoch_start(self) -> None:
        self._train_loss_sum = torch.zeros((), device=self.device)
        self._train_count = 0

    @override
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self._check_batch(x, y)
        logits = self(x)
        loss = self.loss_fn(logits, y)
        # Accumulate here and log once per epoch: `self.log` costs about a millisecond per call, which is a
        # noticeable share of a LeNet step. The epoch means logged are the same as on_epoch logging gives.
        self._train_loss_sum += loss.detach() * len(y)
        self._train_count += len(y)
        self.train_acc.update(logits.detach(), y)
        if batch_idx + 1 >= self.trainer.num_training_batches or self.trainer.is_last_batch:
            mean_loss = self._train_loss_sum / self._train_count
            self.log("train/loss", mean_loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
            self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    @override
    def on_train_epoch_end(self) -> None:
        self._log_phase()

    @override
    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val", self.val_acc)

    @override
    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "test", self.test_acc)

    @override
    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        self._check_batch(x, None)
        return self(x).argmax(dim=-1)
