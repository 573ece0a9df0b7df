"""What one retraining produced, from its per-epoch history: the pure maths shared by the `CorrelationCallback`
(one model in a Lightning fit) and the batched multi-mask module (many models in one fit).

A history is a list of ``{"epoch", "test_acc", "test_loss", "train_loss"}`` dicts, one per retrain epoch in order.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

LAST_EPOCHS = 5  # the paper also reports the mean/std of the last 5 epochs
SHORT_RETRAIN_SHARE = 0.1  # the paper's short-retraining study: test accuracy after 10% of the epochs


def short_retrain_epochs(total_epochs: int) -> int:
    """Epochs of the short retraining: 10% of ``total_epochs``, at least one."""
    return max(1, round(SHORT_RETRAIN_SHARE * total_epochs))


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    # Population std (ddof = 0): the spread of exactly these epochs, defined even for one of them.
    return statistics.fmean(values), statistics.pstdev(values)


def retrain_outcome(history: Sequence[dict[str, float]], total_epochs: int | None = None) -> dict[str, float]:
    """Final metrics of one retraining.

    Args:
        history: per-epoch ``{"epoch", "test_acc", "test_loss", "train_loss"}`` in epoch order.
        total_epochs: epochs the retraining was planned for (sets the 10% point); defaults to ``len(history)``.

    Returns:
        ``final_test_acc, final_test_loss, final_train_loss`` at the best-test-accuracy epoch (the first one on
        ties), ``best_epoch``, ``last5_{test_acc,test_loss,train_loss}_{mean,std}`` over the last (up to) 5 epochs,
        ``short_retrain_epochs`` and ``short_retrain_test_acc`` (test accuracy after that many epochs).

    Raises:
        ValueError: if ``history`` is empty.
    """
    if not history:
        raise ValueError("`history` must hold at least one epoch, got none.")
    best = max(range(len(history)), key=lambda i: (history[i]["test_acc"], -i))
    outcome = {
        "final_test_acc": float(history[best]["test_acc"]),
        "final_test_loss": float(history[best]["test_loss"]),
        "final_train_loss": float(history[best]["train_loss"]),
        "best_epoch": int(history[best]["epoch"]),
    }
    last = history[-LAST_EPOCHS:]
    for key in ("test_acc", "test_loss", "train_loss"):
        mean, std = _mean_std([float(entry[key]) for entry in last])
        outcome[f"last5_{key}_mean"], outcome[f"last5_{key}_std"] = mean, std
    short = short_retrain_epochs(total_epochs or len(history))
    outcome["short_retrain_epochs"] = short
    outcome["short_retrain_test_acc"] = float(history[min(short, len(history)) - 1]["test_acc"])
    return outcome


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: a correlation of constant values is reported as null."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
