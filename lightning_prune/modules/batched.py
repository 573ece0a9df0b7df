"""`BatchedMaskedClassifier`: M masked copies of one network retrained at once, as one LightningModule.

Every copy starts from the same pretrained weights with its own filters zeroed (mask mode: the whole dependency group
of each pruned filter, so a copy computes exactly what the physically pruned network computes). The copies' weights
are stacked along a leading dimension ``M`` and evaluated with ``torch.func.functional_call`` under ``torch.vmap``:
one forward/backward serves all copies. Each copy has its own optimizer state because the optimizer is element-wise
over the stacked tensors (SGD, Adam, AdamW, ...); gradients of pruned entries are zeroed so they stay at zero.
Given the same data order, each copy follows the trajectory that retraining its pruned network alone would.

Only networks without batch statistics or randomness in the forward pass (no BatchNorm, no Dropout) can be batched;
:func:`supports_batching` says which.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.func import functional_call
from typing_extensions import override

from lightning_prune.models import build_model
from lightning_prune.outcome import history_entry, pre_retrain_keys

# Evaluation batches are cut so that copies x images per forward stays below this (activation memory).
_EVAL_IMAGE_COPIES = 16_384
_UNBATCHABLE = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.GroupNorm, nn.LayerNorm)


def supports_batching(model: nn.Module) -> bool:
    """Whether ``model`` can be retrained as stacked masked copies (no BatchNorm, Dropout or norm layers, no
    buffers)."""
    return not any(isinstance(m, _UNBATCHABLE) for m in model.modules()) and not any(True for _ in model.buffers())


def _sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=1e-3, momentum=0.9)


class BatchedMaskedClassifier(LightningModule):
    """Retrain ``len(masks)`` pruned variants of one classifier in a single fit.

    Call :meth:`load_pretrained` before fitting. During the fit it records, per copy, ``pre_metrics`` (train loss and
    accuracy over ``train_eval_dataloader()`` and test loss and accuracy, measured when training starts, before any
    update) and ``histories`` (per epoch ``{"epoch", "test_acc", "test_loss", "train_loss"}``, the test split being
    the validation loader, the train loss the epoch mean of the training steps as `ImageClassifier` logs it).
    Logged: ``batched/val_acc_mean``, ``batched/val_acc_max``, ``batched/train_loss_mean``.

    Args:
        masks: Per copy, the pruned filter indices per layer, e.g. ``[{"conv1": [0, 3]}, {"conv1": [1, 2]}]``.
        model: Name of a network in `lightning_prune.models`.
        model_kwargs: Keyword arguments of the network builder.
        optimizer: Retrain optimizer (element-wise), called with the stacked parameters.
        lr_scheduler: Retrain schedule stepped once per epoch, or None.
        label_smoothing: Label smoothing of the cross-entropy loss, as in `ImageClassifier`.
        input_shape: Shape of one input ``[C, H, W]``; None reads the model's ``input_shape`` attribute.

    Raises:
        ValueError: if ``masks`` is empty or the network has layers that cannot be batched.
    """

    def __init__(
        self,
        masks: list[dict[str, list[int]]],
        model: str = "lenet5_mini",
        model_kwargs: dict[str, Any] | None = None,
        optimizer: OptimizerCallable = _sgd,
        lr_scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        input_shape: list[int] | None = None,
    ) -> None:
        super().__init__()
        if not masks:
            raise ValueError("`masks` must hold at least one mask, got [].")
        self.template = build_model(model, **dict(model_kwargs or {}))
        if not supports_batching(self.template):
            raise ValueError(
                f"`model` must have no BatchNorm, Dropout, norm layers or buffers to be batched, got {model!r}."
            )
        shape = input_shape or getattr(self.template, "input_shape", None)
        if shape is None:
            raise ValueError(f"`input_shape` must be given for model {model!r}, which has no `input_shape`.")
        self.masks = [{name: list(indices) for name, indices in mask.items()} for mask in masks]
        self.num_copies = len(masks)
        self.example_input_array = torch.zeros(1, *shape)
        self._optimizer_fn, self._scheduler_fn = optimizer, lr_scheduler
        self.label_smoothing = label_smoothing
        self._names = [name for name, _ in self.template.named_parameters()]
        self.stacked = nn.ParameterList(
            nn.Parameter(p.detach().unsqueeze(0).repeat(self.num_copies, *[1] * p.dim()))
            for p in self.template.parameters()
        )
        for i, mask in enumerate(self._stacked_masks()):
            self.register_buffer(f"param_mask_{i}", mask, persistent=False)
        # Only the stacked copies train; the template lends its structure to `functional_call`.
        self.template.requires_grad_(False)
        self.pre_metrics: list[dict[str, float]] = []
        self.histories: list[list[dict[str, float]]] = [[] for _ in masks]
        self._reset_sums()
        self._last_val: tuple[torch.Tensor, torch.Tensor] | None = None

    # -------------------------------------------------------------------------------------------- set-up
    def _stacked_masks(self) -> list[torch.Tensor]:
        """0/1 masks ``[M, *param.shape]`` per parameter: the whole dependency group of each pruned filter."""
        from lightning_prune.pruning import PruningStructure

        structure = PruningStructure(self.template, self.example_input_array)
        per_copy = [structure.parameter_masks(structure.check_indices(mask)) for mask in self.masks]
        return [
            torch.stack([masks[name].to(p.dtype) if name in masks else torch.ones_like(p) for masks in per_copy])
            for name, p in self.template.named_parameters()
        ]

    def param_masks(self) -> list[torch.Tensor]:
        """The 0/1 masks ``[M, *param.shape]``, in parameter order."""
        return [getattr(self, f"param_mask_{i}") for i in range(len(self._names))]

    @torch.no_grad()
    def load_pretrained(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Give every copy the pretrained weights (a state dict of the network), then zero its pruned entries."""
        self.template.load_state_dict(state_dict)
        for stacked, p, mask in zip(self.stacked, self.template.parameters(), self.param_masks(), strict=True):
            stacked.copy_(p.detach().unsqueeze(0).expand_as(stacked) * mask)

    # -------------------------------------------------------------------------------------------- forward
    @override
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of every copy: images ``[B, C, H, W]`` -> ``[M, B, num_classes]``."""
        names = self._names

        def one_copy(params: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.template, dict(zip(names, params, strict=True)), (x,))

        return torch.vmap(one_copy, in_dims=(0, None))(tuple(self.stacked), images)

    @torch.no_grad()
    def _eval_logits(self, images: torch.Tensor) -> torch.Tensor:
        """``forward`` of a large evaluation batch in chunks: ``[B, ...]`` -> ``[M, B, num_classes]``."""
        chunk = max(1, _EVAL_IMAGE_COPIES // self.num_copies)
        return torch.cat([self(images[i : i + chunk]) for i in range(0, len(images), chunk)], dim=1)

    def _losses(self, logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
        """Per-copy mean cross-entropy ``[M]`` of logits ``[M, B, C]`` against labels ``[B]``."""
        copies, batch, classes = logits.shape
        flat = F.cross_entropy(
            logits.reshape(copies * batch, classes), labels.repeat(copies), reduction="none", label_smoothing=smoothing
        )
        return flat.view(copies, batch).mean(dim=1)

    # -------------------------------------------------------------------------------------------- training
    def _reset_sums(self) -> None:
        # Sums stay on the module's device: no host synchronisation per step.
        self._train_sum = torch.zeros(self.num_copies, device=self.device)
        self._train_count = 0
        self._val_loss_sum = torch.zeros(self.num_copies, device=self.device)
        self._val_correct = torch.zeros(self.num_copies, device=self.device)
        self._val_count = 0

    @override
    def on_train_start(self) -> None:
        self._reset_sums()
        self._last_val = None
        if not self.pre_metrics:
            self.pre_metrics = self._measure_pre()

    @torch.no_grad()
    def _evaluate(self, loader) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-copy mean cross-entropy (no smoothing, as the pruning boundary measures) and accuracy ``([M], [M])``
        over a loader."""
        loss_sum = torch.zeros(self.num_copies, device=self.device)
        correct = torch.zeros(self.num_copies, device=self.device)
        count = 0
        for images, labels in loader:
            images, labels = images.to(self.device), labels.to(self.device)
            logits = self._eval_logits(images)
            loss_sum += self._losses(logits, labels, 0.0) * len(labels)
            correct += (logits.argmax(dim=-1) == labels).sum(dim=1)
            count += len(labels)
        return (loss_sum / count).cpu(), (correct / count).cpu()

    def _measure_pre(self) -> list[dict[str, float]]:
        datamodule = self.trainer.datamodule
        with torch.inference_mode(False):
            train_loss, train_acc = self._evaluate(datamodule.train_eval_dataloader())
            test_loss, test_acc = self._evaluate(datamodule.val_dataloader())
        keys = pre_retrain_keys("test")
        measured = {"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc}
        return [{keys[field]: float(values[i]) for field, values in measured.items()} for i in range(self.num_copies)]

    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        losses = self._losses(self(images), labels, self.label_smoothing)
        # Lightning's epoch mean of a logged step value is weighted by batch size: do the same per copy.
        self._train_sum += losses.detach() * len(labels)
        self._train_count += len(labels)
        # The copies share no parameter: the gradient of the sum is each copy's own gradient.
        return losses.sum()

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        for param, mask in zip(self.stacked, self.param_masks(), strict=True):
            if param.grad is not None:
                param.grad.mul_(mask)

    @override
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Element-wise optimizers leave zero-gradient zero-weight entries at zero; re-masking guards the rest.
        with torch.no_grad():
            for param, mask in zip(self.stacked, self.param_masks(), strict=True):
                param.mul_(mask)

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self._eval_logits(images)
        self._val_loss_sum += self._losses(logits, labels, self.label_smoothing) * len(labels)
        self._val_correct += (logits.argmax(dim=-1) == labels).sum(dim=1)
        self._val_count += len(labels)

    @override
    def on_validation_epoch_end(self) -> None:
        if self._val_count and not self.trainer.sanity_checking:
            self._last_val = ((self._val_loss_sum / self._val_count).cpu(), (self._val_correct / self._val_count).cpu())
            self.log("batched/val_acc_mean", float(self._last_val[1].mean()))
            self.log("batched/val_acc_max", float(self._last_val[1].max()))
        self._val_loss_sum.zero_()
        self._val_correct.zero_()
        self._val_count = 0

    @override
    def on_train_epoch_end(self) -> None:
        if self._last_val is not None and self._train_count:
            train_loss = (self._train_sum / self._train_count).cpu()
            test_loss, test_acc = self._last_val
            for i, history in enumerate(self.histories):
                # the validation loader is the study's test split
                history.append(history_entry(len(history), test_acc[i], test_loss[i], train_loss[i], split="test"))
            self.log("batched/train_loss_mean", float(train_loss.mean()))
        self._reset_sums()
        self._last_val = None

    @override
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self._optimizer_fn(self.stacked.parameters())
        if self._scheduler_fn is None:
            return {"optimizer": optimizer}
        scheduler = {"scheduler": self._scheduler_fn(optimizer), "interval": "epoch"}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
