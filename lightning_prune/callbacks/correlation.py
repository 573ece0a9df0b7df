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
from typing_extensions import override

from lightning_prune.callbacks._measure import RetrainRecorder, measure, prefixed
from lightning_prune.outcome import MetricNames, post_metrics, pre_metrics


class CorrelationCallback(Callback):
    """Logs ``pre/*`` (the pruned model before retraining) and ``post/*`` (after retraining) of one fit.

    With ``S = split`` (``val`` by default): ``pre/train_loss, pre/train_acc, pre/S_loss, pre/S_acc`` come from the
    pruning callback, or are measured at fit start (the training split through the data's
    ``train_eval_dataloader()`` when it has one, else the training loader; ``S`` = the first validation loader,
    the same split the retrain history is logged from). ``post/S_acc, post/S_loss, post/train_loss`` at the
    best-accuracy retrain epoch, ``post/best_epoch``, ``post/last5_*_{mean,std}`` and ``post/short_retrain_S_acc``
    (after 10% of the retrain epochs) are logged when training ends. After the fit, ``pre_metrics``, ``history``
    and ``post_metrics`` hold the same values as plain dicts.

    The module must log an accuracy and a loss of its validation loader and a training loss every epoch (names
    below; a ``_epoch`` suffix is also accepted).

    Args:
        acc_key: Logged validation accuracy.
        loss_key: Logged validation loss.
        train_loss_key: Logged epoch-mean training loss.
        split: ``val``, or ``test`` when the validation loader is the test split (as in the oracle-pruning study);
            it must be the pruning callback's split.
    """

    def __init__(
        self, acc_key: str = "val/acc", loss_key: str = "val/loss", train_loss_key: str = "train/loss",
        split: str = "val",
    ) -> None:  # fmt: skip
        self.names = MetricNames(acc=acc_key, loss=loss_key, train_loss=train_loss_key, split=split)
        problems = self.names.problems()
        if problems:
            raise ValueError(" ".join(problems))
        self.pre_metrics: dict[str, float] = {}
        self.post_metrics: dict[str, float] = {}
        self._recorder = RetrainRecorder(self.names)
        self._pruning: Callback | None = None

    @property
    def history(self) -> list[dict[str, float]]:
        """Per retrain epoch ``{"epoch", "<split>_acc", "<split>_loss", "train_loss"}``."""
        return self._recorder.history

    @history.setter
    def history(self, history: list[dict[str, float]]) -> None:
        self._recorder.history = history

    @property
    def _retrain_start_epoch(self) -> int | None:
        return self._recorder.start_epoch

    @_retrain_start_epoch.setter
    def _retrain_start_epoch(self, epoch: int | None) -> None:
        self._recorder.start_epoch = epoch

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._pruning = next((cb for cb in trainer.callbacks if hasattr(cb, "pruned_metrics")), None)
        theirs = getattr(getattr(self._pruning, "names", None), "split", self.names.split)
        if theirs != self.names.split:
            raise ValueError(f"`split` must be the pruning callback's split {theirs!r}, got {self.names.split!r}.")

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._pruning is None and self._retrain_start_epoch is None:
            self._measure_pre(trainer, pl_module)
            self._recorder.start(trainer.current_epoch)
            self._log_pre(pl_module)

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._take_pre_if_pruned(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Also here: a pruning callback listed after this one prunes after this epoch-start hook has run.
        self._take_pre_if_pruned(trainer, pl_module)
        self._recorder.record(trainer)  # nothing without a validation this epoch (check_val_every_n_epoch > 1)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.history:
            rank_zero_info("CorrelationCallback: no retrain epoch was recorded, so no post/* metrics.")
            return
        planned = None
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            planned = trainer.max_epochs - self._retrain_start_epoch
        self.post_metrics = post_metrics(self._recorder.outcome(total_epochs=planned))
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
        self._recorder.start(state_dict["retrain_start_epoch"])
        self._recorder.history.extend(dict(entry) for entry in state_dict["history"])

    # -------------------------------------------------------------------------------------------------- private
    def _take_pre_if_pruned(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Once the pruning callback has measured the pruned model, retraining starts with the current epoch."""
        if self._retrain_start_epoch is None and self._pruning is not None and self._pruning.pruned_metrics:
            self.pre_metrics = pre_metrics(self._pruning.pruned_metrics, self.names.split)
            self._recorder.start(trainer.current_epoch)
            self._log_pre(pl_module)

    def _measure_pre(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The module itself, measured as it says (`evaluate_network`, else a classifier's loss and accuracy)."""
        self.pre_metrics = prefixed(measure(trainer, pl_module, self.names.split, "CorrelationCallback"), "pre")

    def _log_pre(self, pl_module: LightningModule) -> None:
        for name, value in self.pre_metrics.items():
            pl_module.log(name, value, on_step=False, on_epoch=True)
