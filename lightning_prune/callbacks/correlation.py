"""`CorrelationCallback`: record a pruned model before and after retraining, for pre- vs post-retrain correlations.

Works in any Lightning fit. With a pruning callback in ``trainer.callbacks`` (anything exposing ``pruned_metrics``,
such as `lightning_prune.callbacks.Pruning`, which prunes at the start of an epoch), ``pre/*`` is that callback's
measurement of the pruned model and the retraining is the epochs from the pruning epoch on; without one, the callback
measures the model itself when training starts and treats the whole fit as the retraining.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_helpers import is_overridden
from typing_extensions import override

from lightning_prune.pruning import evaluate_classifier
from lightning_prune.study.outcome import retrain_outcome

# The pruning callback's metric names -> this callback's pre/* names.
_PRE_FROM_PRUNED = {
    "pruned/train_loss": "pre/train_loss",
    "pruned/train_acc": "pre/train_acc",
    "pruned/test_loss": "pre/test_loss",
    "pruned/test_acc": "pre/test_acc",
}
_POST_NAMES = {
    "final_test_acc": "post/test_acc",
    "final_test_loss": "post/test_loss",
    "final_train_loss": "post/train_loss",
    "best_epoch": "post/best_epoch",
    "last5_test_acc_mean": "post/last5_test_acc_mean",
    "last5_test_acc_std": "post/last5_test_acc_std",
    "last5_test_loss_mean": "post/last5_test_loss_mean",
    "last5_test_loss_std": "post/last5_test_loss_std",
    "last5_train_loss_mean": "post/last5_train_loss_mean",
    "last5_train_loss_std": "post/last5_train_loss_std",
    "short_retrain_test_acc": "post/short_retrain_test_acc",
}


class CorrelationCallback(Callback):
    """Logs ``pre/*`` (the pruned model before retraining) and ``post/*`` (after retraining) of one fit.

    ``pre/train_loss, pre/train_acc, pre/test_loss, pre/test_acc``: from the pruning callback, or measured at fit
    start (training split with eval transforms via the DataModule's ``train_eval_dataloader()`` when it has one,
    else the training loader; test = the first validation loader). ``post/test_acc, post/test_loss,
    post/train_loss`` at the best-test-accuracy retrain epoch, ``post/best_epoch``, ``post/last5_*_{mean,std}``
    and ``post/short_retrain_test_acc`` (after 10% of the retrain epochs) are logged when training ends.
    After the fit, ``pre_metrics``, ``history`` and ``post_metrics`` hold the same values as plain dicts.

    The module must log a test accuracy, a test loss and a training loss every epoch (names below; a ``_epoch``
    suffix is also accepted). The validation loader is the test split, as in the oracle-pruning study.

    Args:
        acc_key: Logged test (validation) accuracy.
        loss_key: Logged test (validation) loss.
        train_loss_key: Logged epoch-mean training loss.
    """

    def __init__(self, acc_key: str = "val/acc", loss_key: str = "val/loss", train_loss_key: str = "train/loss"):
        for name, value in (("acc_key", acc_key), ("loss_key", loss_key), ("train_loss_key", train_loss_key)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"`{name}` must be a non-empty metric name, got {value!r}.")
        self.keys = {"test_acc": acc_key, "test_loss": loss_key, "train_loss": train_loss_key}
        self.pre_metrics: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self.post_metrics: dict[str, float] = {}
        self._retrain_start_epoch: int | None = None
        self._pruning: Callback | None = None

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._pruning = next((cb for cb in trainer.callbacks if hasattr(cb, "pruned_metrics")), None)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._pruning is None and self._retrain_start_epoch is None:
            self._measure_pre(trainer, pl_module)
            self._retrain_start_epoch = trainer.current_epoch
            self._log_pre(pl_module)

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._take_pre_if_pruned(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Also here: a pruning callback listed after this one prunes after this epoch-start hook has run.
        self._take_pre_if_pruned(trainer, pl_module)
        if self._retrain_start_epoch is not None:
            entry = self._epoch_metrics(trainer)
            if entry is not None:
                self.history.append({"epoch": trainer.current_epoch - self._retrain_start_epoch, **entry})

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.history:
            rank_zero_info("CorrelationCallback: no retrain epoch was recorded, so no post/* metrics.")
            return
        planned = None
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            planned = trainer.max_epochs - self._retrain_start_epoch
        outcome = retrain_outcome(self.history, total_epochs=planned)
        self.post_metrics = {_POST_NAMES[k]: v for k, v in outcome.items() if k in _POST_NAMES}
        for logger in trainer.loggers:
            logger.log_metrics(self.post_metrics, step=trainer.global_step)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "pre_metrics": dict(self.pre_metrics),
            "history": [dict(entry) for entry in self.history],
            "retrain_start_epoch": self._retrain_start_epoch,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pre_metrics = dict(state_dict["pre_metrics"])
        self.history = [dict(entry) for entry in state_dict["history"]]
        self._retrain_start_epoch = state_dict["retrain_start_epoch"]

    # -------------------------------------------------------------------------------------------------- private
    def _take_pre_if_pruned(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Once the pruning callback has measured the pruned model, retraining starts with the current epoch."""
        if self._retrain_start_epoch is None and self._pruning is not None and self._pruning.pruned_metrics:
            pruned = self._pruning.pruned_metrics
            self.pre_metrics = {new: float(pruned[old]) for old, new in _PRE_FROM_PRUNED.items() if old in pruned}
            self._retrain_start_epoch = trainer.current_epoch
            self._log_pre(pl_module)

    def _measure_pre(self, trainer: Trainer, pl_module: LightningModule) -> None:
        datamodule = trainer.datamodule
        if datamodule is not None and hasattr(datamodule, "train_eval_dataloader"):
            train_loader = datamodule.train_eval_dataloader()
        else:
            train_loader = trainer.train_dataloader
        train_loss, train_acc = evaluate_classifier(pl_module, train_loader, pl_module.device)
        self.pre_metrics = {"pre/train_loss": train_loss, "pre/train_acc": train_acc}
        test_loader = self._test_loader(trainer)
        if test_loader is not None:
            test_loss, test_acc = evaluate_classifier(pl_module, test_loader, pl_module.device)
            self.pre_metrics.update({"pre/test_loss": test_loss, "pre/test_acc": test_acc})

    @staticmethod
    def _test_loader(trainer: Trainer) -> Any:
        """The first validation loader (Lightning sets them up lazily, so ask the source when none is set yet)."""
        if trainer.datamodule is not None and hasattr(trainer.datamodule, "val_dataloader"):
            loaders = trainer.datamodule.val_dataloader()
        elif trainer.val_dataloaders is not None:
            loaders = trainer.val_dataloaders
        else:
            source = trainer.lightning_module
            loaders = source.val_dataloader() if is_overridden("val_dataloader", source) else None
        return loaders[0] if isinstance(loaders, (list, tuple)) else loaders

    def _log_pre(self, pl_module: LightningModule) -> None:
        for name, value in self.pre_metrics.items():
            pl_module.log(name, value, on_step=False, on_epoch=True)

    def _epoch_metrics(self, trainer: Trainer) -> dict[str, float] | None:
        metrics = trainer.callback_metrics
        entry = {}
        for field, key in self.keys.items():
            value = metrics.get(key, metrics.get(f"{key}_epoch"))
            if value is None:
                return None  # no validation this epoch (check_val_every_n_epoch > 1)
            entry[field] = float(value)
        return entry
