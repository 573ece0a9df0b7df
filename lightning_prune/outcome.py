"""Metric names and the retrain outcome: the one place that reads a retrain history and names what it gives.

No Lightning here: the `Pruning` and `CorrelationCallback` callbacks (one model in a fit), the batched multi-mask
module (many models in one fit) and the study (its records and W&B runs) all use these functions.

A history is a list of per-retrain-epoch dicts ``{"epoch", "<split>_acc", "<split>_loss", "train_loss"}`` in epoch
order, where ``split`` names the loader the accuracy and loss came from: ``"val"`` for a user's validation loader,
``"test"`` in the oracle-pruning study, whose validation loader is the test split. A validation number is never
called test: the split goes into every name derived from it (``final/val_acc``, ``pre/val_acc``, ...).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

LAST_EPOCHS = 5  # the paper also reports the mean/std of the last 5 epochs
SHORT_RETRAIN_SHARE = 0.1  # the paper's short-retraining study: accuracy after 10% of the epochs
SPLITS = ("val", "test")


@dataclass(frozen=True)
class MetricNames:
    """The names a LightningModule logs its epoch metrics under, and the split its accuracy and loss come from.

    Attributes:
        acc: Logged accuracy of the evaluation loader (a `_epoch` suffix is also accepted when reading).
        loss: Logged loss of the evaluation loader.
        train_loss: Logged epoch-mean training loss.
        split: `val` (the validation loader; the default) or `test` (the validation loader is the test split).
    """

    acc: str = "val/acc"
    loss: str = "val/loss"
    train_loss: str = "train/loss"
    split: str = "val"

    def problems(self) -> list[str]:
        """Every problem with the names, each in the form "`arg` must be <rule>, got <value>."."""
        problems = [
            f"`{arg}` must be a non-empty metric name, got {value!r}."
            for arg, value in (("acc_key", self.acc), ("loss_key", self.loss),
                               ("train_loss_key", self.train_loss))
            if not isinstance(value, str) or not value
        ]  # fmt: skip
        if self.split not in SPLITS:
            problems.append(f"`split` must be one of {list(SPLITS)}, got {self.split!r}.")
        return problems

    @property
    def fields(self) -> dict[str, str]:
        """`{history field: logged name}`."""
        return {f"{self.split}_acc": self.acc, f"{self.split}_loss": self.loss, "train_loss": self.train_loss}

    def missing(self, logged: Mapping[str, Any]) -> list[str]:
        """The names (as given) that `logged` holds neither as such nor with a `_epoch` suffix."""
        return [name for name in self.fields.values() if name not in logged and f"{name}_epoch" not in logged]

    def epoch_entry(self, logged: Mapping[str, Any], epoch: int) -> dict[str, float] | None:
        """One history entry from the metrics logged in an epoch, or None when one of them was not logged."""
        if self.missing(logged):
            return None
        entry: dict[str, float] = {"epoch": epoch}
        for field, name in self.fields.items():
            entry[field] = float(logged[f"{name}_epoch"] if f"{name}_epoch" in logged else logged[name])
        return entry

    def logged(self, entry: Mapping[str, float]) -> dict[str, float]:
        """A history entry back under the logged names (to replay a history into a logger)."""
        return {name: float(entry[field]) for field, name in self.fields.items()}


def history_entry(epoch: int, acc: float, loss: float, train_loss: float, split: str) -> dict[str, float]:
    """A history entry from values measured directly (not read from logged metrics)."""
    return {"epoch": epoch, f"{split}_acc": float(acc), f"{split}_loss": float(loss), "train_loss": float(train_loss)}


def short_retrain_epochs(total_epochs: int) -> int:
    """Epochs of the short retraining: 10% of ``total_epochs``, at least one."""
    return max(1, round(SHORT_RETRAIN_SHARE * total_epochs))


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    # Population std (ddof = 0): the spread of exactly these epochs, defined even for one of them. A NaN epoch (a
    # diverged loss) makes both NaN; statistics.pstdev would raise on it.
    if any(math.isnan(value) for value in values):
        return math.nan, math.nan
    return statistics.fmean(values), statistics.pstdev(values)


def retrain_outcome(
    history: Sequence[Mapping[str, float]], total_epochs: int | None = None, split: str = "test"
) -> dict[str, float]:
    """What one retraining produced.

    Args:
        history: Per-epoch ``{"epoch", "<split>_acc", "<split>_loss", "train_loss"}`` in epoch order.
        total_epochs: Epochs the retraining was planned for (sets the 10% point); defaults to ``len(history)``.
        split: The split of the accuracy and loss (``val`` or ``test``); it names the fields read and returned.

    Returns:
        With ``S = split``: ``final_S_acc, final_S_loss, final_train_loss`` at the best-accuracy epoch (the first
        one on ties; epochs whose accuracy is NaN are skipped), ``best_epoch``, ``last_S_acc, last_S_loss,
        last_train_loss`` of the last epoch, ``last5_{S_acc,S_loss,train_loss}_{mean,std}`` over the last (up to)
        5 epochs, ``short_retrain_epochs`` and ``short_retrain_S_acc`` (accuracy after that many epochs).

    Raises:
        ValueError: If ``history`` is empty, or ``split`` is not one of `SPLITS`.
    """
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {list(SPLITS)}, got {split!r}.")
    if not history:
        raise ValueError("`history` must hold at least one epoch, got none.")
    fields = (f"{split}_acc", f"{split}_loss", "train_loss")
    acc = fields[0]
    scored = [i for i, entry in enumerate(history) if not math.isnan(entry[acc])] or [0]
    best = max(scored, key=lambda i: (history[i][acc], -i))
    outcome: dict[str, float] = {f"final_{field}": float(history[best][field]) for field in fields}
    outcome["best_epoch"] = int(history[best]["epoch"])
    outcome.update({f"last_{field}": float(history[-1][field]) for field in fields})
    tail = history[-LAST_EPOCHS:]
    for field in fields:
        outcome[f"last5_{field}_mean"], outcome[f"last5_{field}_std"] = _mean_std([float(e[field]) for e in tail])
    short = short_retrain_epochs(total_epochs or len(history))
    outcome["short_retrain_epochs"] = short
    outcome[f"short_retrain_{acc}"] = float(history[min(short, len(history)) - 1][acc])
    return outcome


def final_metrics(outcome: Mapping[str, float]) -> dict[str, float]:
    """The `Pruning` callback's logged names: ``final/*`` (best epoch), ``last/*``, ``last5/*_{mean,std}``."""
    metrics: dict[str, float] = {"final/epoch": outcome["best_epoch"]}
    for key, value in outcome.items():
        for prefix in ("final", "last5", "last"):
            if key.startswith(f"{prefix}_"):
                metrics[f"{prefix}/{key.removeprefix(f'{prefix}_')}"] = value
                break
    return metrics


def post_metrics(outcome: Mapping[str, float]) -> dict[str, float]:
    """The `CorrelationCallback`'s logged names: ``post/*`` (best epoch, last-5 statistics, short retraining)."""
    metrics = {}
    for key, value in outcome.items():
        if key.startswith("final_"):
            metrics[f"post/{key.removeprefix('final_')}"] = value
        elif key == "best_epoch" or key.startswith(("last5_", "short_retrain_")) and key != "short_retrain_epochs":
            metrics[f"post/{key}"] = value
    return metrics


def pruned_metric_names(split: str) -> dict[str, str]:
    """`{field: logged name}` of the pruned network's measurement: ``pruned/train_*`` and ``pruned/<split>_*``."""
    fields = ("train_loss", "train_acc", f"{split}_loss", f"{split}_acc")
    return {field: f"pruned/{field}" for field in fields}


def pre_retrain_keys(split: str) -> dict[str, str]:
    """`{field: key}` of the pruned network's measurement in a study's records: ``pruned_train_*``,
    ``pruned_<split>_*`` (the logged ``pruned/*`` names with ``_`` for ``/``)."""
    return {field: name.replace("/", "_") for field, name in pruned_metric_names(split).items()}


def pre_metrics(pruned: Mapping[str, float], split: str) -> dict[str, float]:
    """The `CorrelationCallback`'s ``pre/*`` from the pruning callback's ``pruned/*`` (those that were measured)."""
    return {f"pre/{field}": float(pruned[name]) for field, name in pruned_metric_names(split).items() if name in pruned}


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: a correlation of constant values is reported as null."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
