import csv
import json
import os
import random
import stat

import numpy as np
import pytest
from scipy import stats

from lightning_prune._files import write_atomic
from lightning_prune.outcome import retrain_outcome, short_retrain_epochs
from lightning_prune.study.report import (
    RESULT_COLUMNS,
    SUMMARY_KEYS,
    read_json,
    read_results_csv,
    scatter_plot,
    summarize,
    write_results_csv,
)


def _records(num_masks: int = 12, repeats: int = 3, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for mask_id in range(num_masks):
        pruned_loss = rng.uniform(0.5, 2.5)
        for repeat in range(repeats):
            records.append(
                {
                    "trial_id": f"m{mask_id:05d}-r{repeat}",
                    "mask_id": mask_id,
                    "repeat": repeat,
                    "layer_masks": {"conv1": sorted(rng.sample(range(10), 5))},
                    "pruned_train_loss": pruned_loss,
                    "pruned_train_acc": rng.random(),
                    "pruned_test_loss": rng.uniform(0.5, 2.5),
                    "pruned_test_acc": rng.random(),
                    "final_test_acc": 0.9 - 0.05 * pruned_loss + rng.gauss(0, 0.03),
                    "final_test_loss": 0.2 + 0.05 * pruned_loss + rng.gauss(0, 0.03),
                    "final_train_loss": rng.uniform(0.1, 0.3),
                    "params": 4120,
                    "macs": 230650,
                    "seconds": rng.uniform(1, 2),
                    "criterion": "l1" if mask_id == 3 else "",
                }
            )
    return records


def test_results_csv_has_exact_columns_and_round_trips(tmp_path):
    records = _records()
    random.Random(1).shuffle(records)
    write_results_csv(tmp_path / "results.csv", records)
    with open(tmp_path / "results.csv", newline="") as file:
        header = next(csv.reader(file))
    assert tuple(header) == RESULT_COLUMNS
    rows = read_results_csv(tmp_path / "results.csv")
    assert [(r["mask_id"], r["repeat"]) for r in rows] == sorted((r["mask_id"], r["repeat"]) for r in records)
    by_id = {r["trial_id"]: r for r in records}
    for row in rows:
        original = by_id[row["trial_id"]]
        assert row["final_test_acc"] == original["final_test_acc"]  # exact: floats are written with repr
        assert json.loads(row["layer_masks"]) == original["layer_masks"]
        assert row["criterion"] == original["criterion"]


def test_summarize_matches_scipy_on_the_csv(tmp_path):
    records = _records()
    write_results_csv(tmp_path / "results.csv", records)
    rows = read_results_csv(tmp_path / "results.csv")
    short = {r["trial_id"]: r["final_test_acc"] - 0.1 * r["repeat"] for r in records}
    summary = summarize(rows, short)
    assert tuple(summary) == SUMMARY_KEYS

    # Independent per-mask means with numpy over the CSV columns.
    mask_ids = sorted({r["mask_id"] for r in rows})

    def mean(column, source=rows):
        return np.array([np.mean([r[column] for r in source if r["mask_id"] == m]) for m in mask_ids])

    loss, acc, test_loss = mean("pruned_train_loss"), mean("final_test_acc"), mean("final_test_loss")
    short_acc = np.array([np.mean([short[r["trial_id"]] for r in rows if r["mask_id"] == m]) for m in mask_ids])
    tau, p = stats.kendalltau(loss, acc)
    assert summary["kendall_tau_acc"] == pytest.approx(tau) and summary["kendall_p_acc"] == pytest.approx(p)
    tau_l, p_l = stats.kendalltau(loss, test_loss)
    assert summary["kendall_tau_loss"] == pytest.approx(tau_l) and summary["kendall_p_loss"] == pytest.approx(p_l)
    assert summary["spearman_acc"] == pytest.approx(stats.spearmanr(loss, acc).statistic)
    assert summary["pearson_acc"] == pytest.approx(stats.pearsonr(loss, acc).statistic)
    assert summary["kendall_tau_short_vs_full"] == pytest.approx(stats.kendalltau(short_acc, acc).statistic)
    oracle = int(np.argmin(loss))
    assert summary["oracle_mask_id"] == mask_ids[oracle]
    others = [i for i in range(len(mask_ids)) if i != oracle]
    assert summary["anomaly_ratio_acc"] == pytest.approx(sum(acc[i] >= acc[oracle] for i in others) / len(others))
    assert summary["anomaly_ratio_loss"] == pytest.approx(
        sum(test_loss[i] <= test_loss[oracle] for i in others) / len(others)
    )
    assert summary["num_masks"] == 12 and summary["num_trials"] == 36


def test_summarize_constant_metric_gives_null_and_ties_pick_lowest_mask():
    rows = [r | {"final_test_acc": 0.5, "pruned_train_loss": 1.0} for r in _records(4, 1)]
    summary = summarize(rows)
    assert summary["kendall_tau_acc"] is None and summary["spearman_acc"] is None
    assert summary["kendall_tau_short_vs_full"] is None
    assert summary["oracle_mask_id"] == 0
    assert summary["anomaly_ratio_acc"] == 1.0
    json.dumps(summary, allow_nan=False)


def test_summarize_empty_raises():
    with pytest.raises(ValueError, match="`rows` must hold at least one finished trial"):
        summarize([])


def test_scatter_plot_writes_pngs(tmp_path):
    tmp_path = tmp_path / "figures"
    rows = [r | {"layer_masks": json.dumps(r["layer_masks"])} for r in _records()]
    summary = summarize(rows)
    for metric in ("final_test_acc", "final_test_loss"):
        scatter_plot(tmp_path / f"{metric}.png", rows, summary, metric, "demo")
        assert (tmp_path / f"{metric}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final_test_acc.png", "final_test_loss.png"]


def test_write_atomic_replaces_and_leaves_no_temporary_on_failure(tmp_path):
    tmp_path = tmp_path / "out"
    target = tmp_path / "out.json"
    write_atomic(target, "old")
    write_atomic(target, "new")
    assert target.read_text() == "new"

    with pytest.raises(TypeError):
        write_atomic(target, 3.0)  # not text or bytes: the write fails after the temporary exists
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_write_atomic_gives_files_the_usual_umask_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        write_atomic(tmp_path / "results.csv", "a,b\n")
        write_atomic(tmp_path / "pretrained.ckpt", lambda file: file.write(b"\x00"))
    finally:
        os.umask(previous)
    for name in ("results.csv", "pretrained.ckpt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644  # readable by others, as `touch` makes it


def test_read_json_names_a_truncated_file_and_the_remedy(tmp_path):
    path = tmp_path / "m00001-r0.json"
    path.write_text('{"trial_id": "m00001-r0", "final_te')
    with pytest.raises(ValueError, match=r"`.*m00001-r0.json` must be a complete JSON file, got unreadable content "
                                         r"\(Unterminated string.*\)\. Retrain it\.$"):  # fmt: skip
        read_json(path, "Retrain it.")
    path.write_text('{"ok": 1}')
    assert read_json(path) == {"ok": 1}


def test_retrain_outcome_against_a_brute_force_loop():
    rng = random.Random(0)
    history = [
        {"epoch": e, "test_acc": rng.choice([0.5, 0.6, 0.7]), "test_loss": rng.random(), "train_loss": rng.random()}
        for e in range(30)
    ]
    outcome = retrain_outcome(history)
    best = 0
    for e in range(30):
        if history[e]["test_acc"] > history[best]["test_acc"]:
            best = e
    assert outcome["best_epoch"] == best
    assert outcome["final_test_loss"] == history[best]["test_loss"]
    assert outcome["final_train_loss"] == history[best]["train_loss"]
    last = [h["test_acc"] for h in history[-5:]]
    assert outcome["last5_test_acc_mean"] == pytest.approx(np.mean(last))
    assert outcome["last5_test_acc_std"] == pytest.approx(np.std(last))
    assert outcome["short_retrain_epochs"] == 3 == short_retrain_epochs(30)
    assert outcome["short_retrain_test_acc"] == history[2]["test_acc"]
    assert retrain_outcome(history[:2], total_epochs=30)["short_retrain_test_acc"] == history[1]["test_acc"]


def test_retrain_outcome_empty_raises():
    with pytest.raises(ValueError, match="`history` must hold at least one epoch"):
        retrain_outcome([])


def test_summary_correlates_with_the_post_column_and_the_csv_keeps_lm_eval_columns(tmp_path):
    post = "lm_eval/boolq/acc"
    rng = random.Random(5)
    records = [{**record, post: rng.random(), "ppl/wiki": rng.uniform(10, 20)} for record in _records()]
    rows = write_results_csv(tmp_path / "results.csv", records)
    with open(tmp_path / "results.csv", newline="") as file:
        assert tuple(next(csv.reader(file))) == (*RESULT_COLUMNS, post, "ppl/wiki")
    parsed = read_results_csv(tmp_path / "results.csv")
    assert [row[post] for row in parsed] == [row[post] for row in rows] and isinstance(parsed[0]["ppl/wiki"], float)
    summary = summarize(parsed, post=post)
    # By hand: per-mask means over repeats, then scipy on the pruned train loss vs the post column.
    masks = sorted({r["mask_id"] for r in records})
    loss = [np.mean([r["pruned_train_loss"] for r in records if r["mask_id"] == m]) for m in masks]
    value = [np.mean([r[post] for r in records if r["mask_id"] == m]) for m in masks]
    accuracy = [np.mean([r["final_test_acc"] for r in records if r["mask_id"] == m]) for m in masks]
    assert summary["kendall_tau_acc"] == pytest.approx(stats.kendalltau(loss, value)[0])
    assert summary["pearson_acc"] == pytest.approx(stats.pearsonr(loss, value)[0])
    assert summary["kendall_tau_acc"] != pytest.approx(stats.kendalltau(loss, accuracy)[0])
    oracle = int(np.argmin(loss))
    others = [v for i, v in enumerate(value) if i != oracle]
    assert summary["anomaly_ratio_acc"] == pytest.approx(np.mean([v >= value[oracle] for v in others]))
    # The loss side and everything else stay as they are with the default post column.
    default = summarize(parsed)
    unchanged = [key for key in SUMMARY_KEYS if "_acc" not in key]
    assert [summary[key] for key in unchanged] == [default[key] for key in unchanged]
