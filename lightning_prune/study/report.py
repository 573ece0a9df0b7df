"""The study's outputs: ``results.csv``, ``summary.json``, the two scatter plots, and its W&B runs (one per trial,
in the study's group, and a summary run).

Every file is written atomically (a temporary file in the same folder, then ``os.replace``), so a reader, or a
study killed mid-write, never sees half a file. Correlations come from ``scipy.stats``. W&B runs are offline
unless ``WANDB_MODE=online``; never ``wandb.init``: Lightning's WandbLogger, closed by
`lightning_prune._wandb.finish_wandb`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from scipy import stats

from lightning_prune._files import write_atomic
from lightning_prune._wandb import finish_wandb
from lightning_prune.outcome import MetricNames, finite_or_none, post_metrics
from lightning_prune.study.spec import DEFAULT_POST_METRIC, PRE_KEYS, StudyConfig, Trial, post_column, trial_path

RESULT_COLUMNS = (
    "trial_id",
    "mask_id",
    "repeat",
    "layer_masks",
    "pruned_train_loss",
    "pruned_train_acc",
    "pruned_test_loss",
    "pruned_test_acc",
    "final_test_acc",
    "final_test_loss",
    "final_train_loss",
    "params",
    "macs",
    "seconds",
    "criterion",
)
SUMMARY_KEYS = (
    "num_masks",
    "num_trials",
    "kendall_tau_acc",
    "kendall_p_acc",
    "kendall_tau_loss",
    "kendall_p_loss",
    "spearman_acc",
    "pearson_acc",
    "oracle_mask_id",
    "anomaly_ratio_acc",
    "anomaly_ratio_loss",
    "kendall_tau_short_vs_full",
)
_WANDB_MARKER = ".wandb_summary"  # the digest of the results.csv the W&B summary run was logged for
# Record entries of a trial's `LmEvaluation` (`final` stage), kept as extra results.csv columns.
_EVALUATION_PREFIXES = ("lm_eval/", "ppl/")
_INT_COLUMNS = ("mask_id", "repeat", "params", "macs")
_TEXT_COLUMNS = ("trial_id", "layer_masks", "criterion")


# --------------------------------------------------------------------------------------------------- files
def write_json(path: Path, payload: Any) -> None:
    """Atomic JSON (indented, NaN refused: use None)."""
    write_atomic(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")


def read_json(
    path: Path, remedy: str = "Delete it and rerun to write it again.", required: dict[str, type] | None = None
) -> Any:
    """A JSON file the study wrote, or one clear error naming the file and what to do.

    Args:
        path: The file.
        remedy: What to do, for the message.
        required: Keys the file's object must have, with their types (checked when given).

    Raises:
        ValueError: if the file is not valid JSON (a truncated copy, a full disk, a hand edit), or lacks a key.
    """
    try:
        payload = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"`{path}` must be a complete JSON file, got unreadable content ({error}). {remedy}") from None
    if required is not None:
        wrong = [
            f"{key} ({kind.__name__})" for key, kind in required.items()
            if not isinstance(payload, dict) or key not in payload or not isinstance(payload[key], kind)
        ]
        if wrong:
            got = f"keys {sorted(payload)}" if isinstance(payload, dict) else f"a {type(payload).__name__}"
            raise ValueError(f"`{path}` must be an object with {', '.join(wrong)}, got {got}. {remedy}")
    return payload


TRIAL_KEYS: dict[str, type] = {column: object for column in RESULT_COLUMNS} | {
    "trial_id": str, "mask_id": int, "repeat": int, "layer_masks": dict
}


# ----------------------------------------------------------------------------------------------- results.csv
def result_row(record: dict[str, Any]) -> dict[str, Any]:
    """The ``results.csv`` row of one trial record (``trials/<trial_id>.json``): ``RESULT_COLUMNS``, then the
    record's `LmEvaluation` results (``lm_eval/<task>/<metric>``, ``ppl/<name>``) when the study sets `lm_eval`."""
    row = {column: record[column] for column in RESULT_COLUMNS if column != "layer_masks"}
    row["layer_masks"] = json.dumps(record["layer_masks"], separators=(",", ":"))
    row.update({key: record[key] for key in record if key.startswith(_EVALUATION_PREFIXES)})
    return row


def write_results_csv(path: Path, records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write one row per trial, ordered by ``(mask_id, repeat)``; returns the rows."""
    rows = sorted((result_row(r) for r in records), key=lambda row: (row["mask_id"], row["repeat"]))
    evaluated = sorted({key for row in rows for key in row if key not in RESULT_COLUMNS})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*RESULT_COLUMNS, *evaluated], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        # repr keeps every float digit: the CSV round-trips exactly.
        writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    write_atomic(path, buffer.getvalue())
    return rows


def read_results_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of ``results.csv`` with numbers parsed back."""
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    for row in rows:
        for column in row:
            if column in _INT_COLUMNS:
                row[column] = int(row[column])
            elif column not in _TEXT_COLUMNS:
                row[column] = float(row[column])
    return rows


# ----------------------------------------------------------------------------------------------- summary.json
def per_mask_means(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> dict[int, dict[str, Any]]:
    """``{mask_id: {column: mean over repeats, "criterion": ...}}`` ordered by mask id."""
    grouped: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[int(row["mask_id"])].append(row)
    return {
        mask_id: {
            **{c: float(np.mean([float(r[c]) for r in group])) for c in columns},
            "criterion": group[0].get("criterion", ""),
        }
        for mask_id, group in sorted(grouped.items())
    }


def summarize(
    rows: Sequence[dict[str, Any]], short_test_acc: dict[str, float] | None = None, post: str = "final_test_acc"
) -> dict[str, Any]:
    """The study's summary from its result rows (per-mask means over repeats, over every mask of the rows: the
    criteria's masks count like the random ones).

    Args:
        rows: ``results.csv`` rows (parsed or as built).
        short_test_acc: ``{trial_id: test accuracy after 10% of retraining}``; the short-vs-full τ is null without.
        post: The column the ``*_acc`` entries correlate with (`spec.post_column` of the study's `post_metric`):
            the final test accuracy, or an lm-eval metric; higher is better.

    Returns:
        A dict with exactly ``SUMMARY_KEYS``: Kendall τ-b (and p) of pruned train loss vs final test accuracy and
        vs final test loss, Spearman and Pearson coefficients for accuracy, the oracle mask (lowest pruned train
        loss; the lowest id on ties), anomaly ratios (the share of the *other* masks whose final test accuracy is
        >= the oracle mask's, or whose final test loss is <= it), and τ of short vs full retraining accuracy.

    Raises:
        ValueError: if ``rows`` is empty.
    """
    if not rows:
        raise ValueError("`rows` must hold at least one finished trial, got none.")
    columns = ("pruned_train_loss", post, "final_test_loss", "final_test_acc")
    means = per_mask_means(rows, list(dict.fromkeys(columns)))
    mask_ids = list(means)
    loss, acc, test_loss, full_acc = (np.array([means[m][column] for m in mask_ids]) for column in columns)
    short = None
    if short_test_acc is not None and all(row["trial_id"] in short_test_acc for row in rows):
        short_means = per_mask_means([{**row, "short": short_test_acc[row["trial_id"]]} for row in rows], ["short"])
        short = np.array([short_means[m]["short"] for m in mask_ids])
    oracle = int(np.argmin(loss))  # the first minimum: the lowest mask id on ties
    others = np.arange(len(mask_ids)) != oracle
    summary: dict[str, Any] = {"num_masks": len(mask_ids), "num_trials": len(rows)}
    nan2 = (np.nan, np.nan)
    enough = len(mask_ids) >= 2
    with warnings.catch_warnings():
        # A constant column has no correlation: scipy warns and returns NaN, reported as null.
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        summary["kendall_tau_acc"], summary["kendall_p_acc"] = stats.kendalltau(loss, acc) if enough else nan2
        summary["kendall_tau_loss"], summary["kendall_p_loss"] = stats.kendalltau(loss, test_loss) if enough else nan2
        summary["spearman_acc"] = stats.spearmanr(loss, acc)[0] if enough else np.nan
        summary["pearson_acc"] = stats.pearsonr(loss, acc)[0] if enough else np.nan
        summary["oracle_mask_id"] = mask_ids[oracle]
        summary["anomaly_ratio_acc"] = np.mean(acc[others] >= acc[oracle]) if enough else np.nan
        summary["anomaly_ratio_loss"] = np.mean(test_loss[others] <= test_loss[oracle]) if enough else np.nan
        has_short = short is not None and enough
        summary["kendall_tau_short_vs_full"] = stats.kendalltau(short, full_acc)[0] if has_short else np.nan
    return {key: value if isinstance(value, int) else finite_or_none(float(value)) for key, value in summary.items()}


# ---------------------------------------------------------------------------------------------------- figures
def scatter_plot(
    path: Path, rows: Sequence[dict[str, Any]], summary: dict[str, Any], metric: str, title: str = ""
) -> None:
    """Pruned train loss (x) vs a final metric (y) per mask: the oracle mask a star with crosshairs, anomalies in
    another colour, the criteria's masks labelled, Kendall's τ and p in the corner.

    Args:
        path: the PNG to write.
        rows: ``results.csv`` rows.
        summary: the output of :func:`summarize` on ``rows``.
        metric: ``"final_test_loss"``, or the post column (``"final_test_acc"``, an lm-eval metric).
        title: figure title (the study name).
    """
    import matplotlib  # heavy (a second of import): only a finished study draws

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    by_accuracy = metric != "final_test_loss"
    means = per_mask_means(rows, ["pruned_train_loss", metric])
    mask_ids = list(means)
    x = np.array([means[m]["pruned_train_loss"] for m in mask_ids])
    y = np.array([means[m][metric] for m in mask_ids])
    oracle = mask_ids.index(summary["oracle_mask_id"])
    anomaly = (y >= y[oracle]) if by_accuracy else (y <= y[oracle])
    anomaly[oracle] = False
    figure, axes = plt.subplots(figsize=(6, 4.5), dpi=120)
    axes.scatter(x[~anomaly], y[~anomaly], s=14, color="tab:blue", alpha=0.7, label="mask")
    axes.scatter(x[anomaly], y[anomaly], s=14, color="tab:orange", alpha=0.8, label="anomaly (beats the oracle)")
    axes.axvline(x[oracle], color="tab:red", linewidth=0.8, linestyle="--")
    axes.axhline(y[oracle], color="tab:red", linewidth=0.8, linestyle="--")
    axes.scatter([x[oracle]], [y[oracle]], marker="*", s=220, color="tab:red", zorder=5, label="oracle mask")
    for i, mask_id in enumerate(mask_ids):
        if means[mask_id]["criterion"]:
            axes.annotate(means[mask_id]["criterion"], (x[i], y[i]), xytext=(4, 4), textcoords="offset points")
            axes.scatter([x[i]], [y[i]], s=40, facecolors="none", edgecolors="black", zorder=4)
    suffix = "acc" if by_accuracy else "loss"
    tau, p = summary[f"kendall_tau_{suffix}"], summary[f"kendall_p_{suffix}"]
    text = "Kendall τ = n/a" if tau is None else f"Kendall τ = {tau:.3f} (p = {p:.2g})"
    axes.text(0.02, 0.02, text, transform=axes.transAxes, fontsize=9, bbox={"facecolor": "white", "alpha": 0.8})
    axes.set_xlabel("pruned train loss (before retraining)")
    axes.set_ylabel({"final_test_acc": "final test accuracy", "final_test_loss": "final test loss"}.get(metric, metric))
    axes.set_title(f"{title}: {len(mask_ids)} masks" if title else f"{len(mask_ids)} masks")
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    write_atomic(path, buffer.getvalue())


# ---------------------------------------------------------------------------------------------- W&B summary run
def log_summary_run(
    study_dir: Path, name: str, project: str, rows: Sequence[dict[str, Any]], summary: dict[str, Any],
    post: str = "final_test_acc",
) -> None:
    """One W&B run (group = the study name) with the results table, a scatter plot, the PNGs and the summary."""
    import wandb  # heavy (seconds of import): only a finished study with W&B on logs its tables and plots

    offline = os.environ.get("WANDB_MODE", "offline") != "online"
    logger = WandbLogger(
        project=project, name=f"{name}-summary", group=name, job_type="summary", save_dir=str(study_dir),
        offline=offline,
    )  # fmt: skip
    try:
        columns = list(RESULT_COLUMNS)
        logger.log_table("results", columns=columns, data=[[row[c] for c in columns] for row in rows])
        means = per_mask_means(rows, ["pruned_train_loss", post])
        table = wandb.Table(
            columns=["mask_id", "pruned_train_loss", post, "criterion"],
            data=[[m, v["pruned_train_loss"], v[post], v["criterion"]] for m, v in means.items()],
        )
        experiment = logger.experiment
        experiment.log(
            {
                f"scatter/pruned_train_loss_vs_{post}": wandb.plot.scatter(
                    table, "pruned_train_loss", post, title=f"{name}: pruned train loss vs {post}"
                ),
                **{
                    f"figures/{png}": wandb.Image(str(study_dir / f"{png}.png"))
                    for png in ("scatter_acc", "scatter_loss")
                    if (study_dir / f"{png}.png").is_file()
                },
            }
        )
        experiment.summary.update({f"summary/{k}": v for k, v in summary.items() if v is not None})
    finally:
        finish_wandb(logger)


# -------------------------------------------------------------------------------------------- W&B trial runs
def wandb_logger(config: StudyConfig, name: str, job_type: str, extra: dict[str, Any] | None = None):
    """A W&B run in the study's group (offline unless WANDB_MODE=online), or False when W&B is off."""
    if not config.wandb:
        return False
    return WandbLogger(
        project=config.wandb_project,
        name=name,
        group=config.name,
        job_type=job_type,
        save_dir=str(config.study_dir),
        offline=os.environ.get("WANDB_MODE", "offline") != "online",
        config=extra or {},
    )


def trial_identity(fields: dict[str, Any]) -> dict[str, Any]:
    """What a trial's W&B run is filtered by: mask, repeat, seed, criterion and the pruned filters."""
    keys = ("mask_id", "repeat", "seed", "criterion", "layer_masks")
    return {key: json.dumps(fields[key]) if key == "layer_masks" else fields[key] for key in keys}


def log_trial_run(config: StudyConfig, record: dict[str, Any]) -> None:
    """The W&B run of a batched trial, written after the fact: its history, then ``pre/*`` and ``post/*``."""
    logger = wandb_logger(config, record["trial_id"], "trial", trial_identity(record))
    if not logger:
        return
    try:
        for entry in record["history"]:
            logger.log_metrics(MetricNames(split="test").logged(entry), step=int(entry["epoch"]))
        pre = {key.replace("pruned_", "pre/"): record[key] for key in PRE_KEYS}
        logger.log_metrics({**pre, **post_metrics(record)})
    finally:
        finish_wandb(logger)


# ------------------------------------------------------------------------------------------- the whole report
def write_report(config: StudyConfig, trials: list[Trial]) -> dict[str, Any] | None:
    """``results.csv`` from the finished trials; summary, figures and W&B summary once all are finished."""
    study_dir = Path(config.study_dir)
    records = []
    for trial in trials:
        path = trial_path(study_dir, trial.trial_id)
        if path.is_file():
            records.append(read_json(path, "Delete it and rerun: that trial is retrained.", TRIAL_KEYS))
    if not records:
        return None
    rows = write_results_csv(study_dir / "results.csv", records)
    if len(records) < len(trials):
        rank_zero_info(f"{len(records)} of {len(trials)} trials done; summary.json is written when all are.")
        return None
    short = {record["trial_id"]: record["short_retrain_test_acc"] for record in records}
    summary = summarize(rows, short, post_column(config.post_metric))
    write_json(study_dir / "summary.json", summary)
    _draw_figures(config, rows, summary)
    if config.wandb:
        _log_summary_once(config, rows, summary)
    rank_zero_info(f"Study {config.name!r} done: {json.dumps(summary)}")
    return summary


def _draw_figures(config: StudyConfig, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """The two scatter plots; a failed write (a full disk) costs only the figures, said in one line."""
    study_dir = Path(config.study_dir)
    post = post_column(config.post_metric)
    for name, metric in (("scatter_acc.png", post), ("scatter_loss.png", "final_test_loss")):
        try:
            scatter_plot(study_dir / name, rows, summary, metric, config.name)
        except OSError as error:
            rank_zero_warn(
                f"results.csv and summary.json are complete in {study_dir}, but {name} was not written "
                f"({error.strerror or error}). Free space and rerun the same command to draw the figures."
            )


def _log_summary_once(config: StudyConfig, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """A rerun of a finished study does not add another W&B summary run for the same results."""
    study_dir = Path(config.study_dir)
    content = (study_dir / "results.csv").read_bytes()
    if config.post_metric != DEFAULT_POST_METRIC:  # another post metric is another summary of the same results
        content += config.post_metric.encode()
    digest = hashlib.sha256(content).hexdigest()
    marker = study_dir / _WANDB_MARKER
    if marker.is_file() and marker.read_text().strip() == digest:
        return
    log_summary_run(study_dir, config.name, config.wandb_project, rows, summary, post_column(config.post_metric))
    write_atomic(marker, digest + "\n")
