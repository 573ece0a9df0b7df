"""The one place metric names and retrain outcomes are computed, against brute-force loops."""

import math
import random

import numpy as np
import pytest

from lightning_prune.outcome import (
    MetricNames,
    final_metrics,
    history_entry,
    post_metrics,
    pre_metrics,
    pre_retrain_keys,
    retrain_outcome,
)


def _history(split: str, accs: list[float]) -> list[dict]:
    return [history_entry(e, a, 1.0 - a if a == a else 0.5, 2.0 - e / 10, split) for e, a in enumerate(accs)]


def test_retrain_outcome_skips_nan_and_takes_the_first_best_epoch():
    history = _history("val", [0.5, math.nan, 0.8, 0.8, 0.6, 0.7, 0.75])
    outcome = retrain_outcome(history, split="val")
    best = None
    for e, entry in enumerate(history):  # brute force: first strictly larger, NaN never wins
        if not math.isnan(entry["val_acc"]) and (best is None or entry["val_acc"] > history[best]["val_acc"]):
            best = e
    assert outcome["best_epoch"] == best == 2 and outcome["final_val_acc"] == 0.8
    assert outcome["final_train_loss"] == pytest.approx(1.8) and outcome["last_val_acc"] == 0.75
    tail = [0.8, 0.8, 0.6, 0.7, 0.75]
    assert outcome["last5_val_acc_mean"] == pytest.approx(np.mean(tail))
    assert outcome["last5_val_acc_std"] == pytest.approx(np.std(tail))
    assert outcome["short_retrain_epochs"] == 1 and outcome["short_retrain_val_acc"] == 0.5


def test_outcome_names_say_the_split_they_came_from():
    rng = random.Random(0)
    history = _history("val", [rng.random() for _ in range(6)])
    final = final_metrics(retrain_outcome(history, split="val"))
    assert {"final/epoch", "final/val_acc", "final/val_loss", "final/train_loss", "last/val_acc",
            "last5/val_acc_mean", "last5/train_loss_std"} <= set(final)  # fmt: skip
    assert not any("test" in name for name in final)
    post = post_metrics(retrain_outcome(_history("test", [0.1, 0.3]), split="test"))
    assert post["post/test_acc"] == 0.3 and post["post/best_epoch"] == 1 and "post/short_retrain_test_acc" in post
    assert "post/short_retrain_epochs" not in post and not any(k.startswith("post/last_") for k in post)
    pruned = {"pruned/train_loss": 1.0, "pruned/train_acc": 0.5, "pruned/val_loss": 2.0, "pruned/val_acc": 0.25}
    assert pre_metrics(pruned, "val") == {"pre/train_loss": 1.0, "pre/train_acc": 0.5, "pre/val_loss": 2.0,
                                          "pre/val_acc": 0.25}  # fmt: skip


def test_metric_names_read_logged_values_with_or_without_the_epoch_suffix():
    names = MetricNames(acc="val_acc", loss="val_loss", train_loss="train_loss")
    logged = {"val_acc": 0.5, "val_loss": 1.5, "train_loss_epoch": 0.7, "train_loss_step": 9.0}
    assert names.epoch_entry(logged, 3) == {"epoch": 3, "val_acc": 0.5, "val_loss": 1.5, "train_loss": 0.7}
    assert names.missing({"val_acc": 1.0}) == ["val_loss", "train_loss"]
    assert names.epoch_entry({"val_acc": 1.0}, 0) is None
    assert names.logged({"val_acc": 0.5, "val_loss": 1.5, "train_loss": 0.7}) == {
        "val_acc": 0.5, "val_loss": 1.5, "train_loss": 0.7}  # fmt: skip


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: retrain_outcome([]), "`history` must hold at least one epoch, got none."),
        (lambda: retrain_outcome(_history("val", [0.5]), split="train"), r"`split` must be one of \['val', 'test'\]"),
    ],
)
def test_retrain_outcome_rejects_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_metric_names_problems_name_the_argument():
    assert MetricNames(acc="", split="train").problems() == [
        "`acc_key` must be a non-empty metric name, got ''.", "`split` must be one of ['val', 'test'], got 'train'."]


def test_retrain_outcome_last5_is_nan_when_a_tail_epoch_is_nan():
    history = _history("val", [0.5, 0.6, 0.7])
    history[-1]["train_loss"] = math.nan  # a diverged epoch: numpy's mean/std are NaN too
    outcome = retrain_outcome(history, split="val")
    assert math.isnan(outcome["last5_train_loss_mean"]) and math.isnan(np.std([e["train_loss"] for e in history]))
    assert math.isnan(outcome["last5_train_loss_std"])
    assert outcome["last5_val_acc_std"] == pytest.approx(np.std([0.5, 0.6, 0.7]))


def test_study_pre_keys_are_the_pruned_metric_names():
    """The batched module and the study's records name the pruned measurement as `outcome` does."""
    from lightning_prune.study.spec import PRE_KEYS

    keys = pre_retrain_keys("test")
    assert tuple(keys.values()) == PRE_KEYS == ("pruned_train_loss", "pruned_train_acc", "pruned_test_loss",
                                                "pruned_test_acc")
    assert pre_retrain_keys("val")["val_acc"] == "pruned_val_acc"
