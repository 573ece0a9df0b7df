"""The callbacks' one measurement contract: how a module's network is evaluated (`contracts.EvaluatesNetwork`),
the before-retraining metrics on the training split and the first validation loader, and the retrain recorder
whose history gives `final/*` (`Pruning`) and `post/*` (`CorrelationCallback`) through `outcome.retrain_outcome`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from lightning_prune.callbacks import _loaders
from lightning_prune.contracts import EvaluatesNetwork, HasLossFn, StartsRetrain
from lightning_prune.outcome import MetricNames, retrain_outcome
from lightning_prune.pruning.metrics import evaluate_classifier

Evaluate = Callable[[torch.nn.Module, Iterable, Any], tuple[float, float]]


def evaluator(module: LightningModule) -> Evaluate:
    """The module's `evaluate_network`, else a classifier's loss and accuracy."""
    return module.evaluate_network if isinstance(module, EvaluatesNetwork) else evaluate_classifier


def loss_function(module: LightningModule) -> Callable:
    """The module's `loss_fn`, else cross-entropy."""
    return (module.loss_fn if isinstance(module, HasLossFn) else None) or torch.nn.functional.cross_entropy


def start_retrain(module: LightningModule) -> None:
    """Switch the module to its retrain recipe, when it has one."""
    if isinstance(module, StartsRetrain) and callable(module.start_retrain):
        module.start_retrain()


def measure(trainer: Trainer, network: torch.nn.Module, split: str, who: str, warn: bool = False) -> dict[str, float]:
    """`{train_loss, train_acc, <split>_loss, <split>_acc}` of `network`: the training split (`train_eval_dataloader`
    when the data has one) and the first validation loader (left out, with a warning if `warn`, when none is known).
    Measured as the module says (`evaluator`)."""
    evaluate, device = evaluator(trainer.lightning_module), trainer.lightning_module.device
    metrics = {}
    metrics["train_loss"], metrics["train_acc"] = evaluate(network, _loaders.train_eval_loader(trainer, who), device)
    loader = _loaders.eval_loader(trainer)
    if loader is not None:
        metrics[f"{split}_loss"], metrics[f"{split}_acc"] = evaluate(network, loader, device)
    elif warn:
        rank_zero_warn(f"{who}: no validation loader is known yet, so `pruned/{split}_*` are not measured; "
                       "loaders passed to `fit` directly are known after the first validation: use a DataModule "
                       "or keep the sanity check (num_sanity_val_steps > 0).")
    return metrics


def prefixed(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
    return {f"{prefix}/{name}": float(value) for name, value in metrics.items()}


class RetrainRecorder:
    """Per retrain epoch `{"epoch", "<split>_acc", "<split>_loss", "train_loss"}` from the logged metrics, counted
    from `start_epoch`; its `outcome` is `outcome.retrain_outcome` of that history."""

    def __init__(self, names: MetricNames) -> None:
        self.names = names
        self.start_epoch: int | None = None
        self.history: list[dict[str, float]] = []

    def start(self, epoch: int) -> None:
        self.start_epoch, self.history = epoch, []

    def record(self, trainer: Trainer) -> None:
        """At a training epoch's end (nothing before `start`, or without a validation this epoch)."""
        if self.start_epoch is None:
            return
        entry = self.names.epoch_entry(trainer.callback_metrics, trainer.current_epoch - self.start_epoch)
        if entry is not None:
            self.history.append(entry)

    def outcome(self, total_epochs: int | None = None) -> dict[str, float]:
        return retrain_outcome(self.history, total_epochs=total_epochs, split=self.names.split)


def warn_unlogged(who: str, names: MetricNames, trainer: Trainer) -> None:
    """One warning if a metric the recorder reads was never logged."""
    missing = names.missing(trainer.callback_metrics)
    if missing:
        rank_zero_warn(
            f"{who}: the metrics {missing} were not logged, so there is no retrain history and no final/*; "
            f"logged: {sorted(trainer.callback_metrics)}. Set `acc_key`, `loss_key` and `train_loss_key` to "
            "names your module logs."
        )
