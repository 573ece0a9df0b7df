"""Run a study end to end: check ``study_dir``, prepare, run the pending trials of this shard on the chosen path
(`path_choice`) with a progress bar, and report (``results.csv`` always; ``summary.json``, figures and the W&B
summary run once every trial of the study is done)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from tqdm.auto import tqdm

from lightning_prune._files import write_atomic
from lightning_prune.study import report
from lightning_prune.study.path_choice import run_pending
from lightning_prune.study.prepare import check_study_dir, ensure_masks, ensure_pretrained, exclusive, plan_trials
from lightning_prune.study.process_context import cpu_threads
from lightning_prune.study.spec import StudyConfig, parse_shard
from lightning_prune.study.trial import Trial, trial_path
from lightning_prune.study.validation import validate

_WANDB_MARKER = ".wandb_summary"


def run_study(config: StudyConfig) -> dict[str, Any] | None:
    """Run (or resume) a study.

    Returns:
        The summary when every trial of the study is finished, else None.

    Raises:
        ValueError: for an invalid config, or a ``study_dir`` holding a study of another config (before compute).
        StudyInterrupted: on Ctrl-C (a KeyboardInterrupt saying how many trials finished and how to resume).
    """
    validate(config)
    with cpu_threads(config.cpu_threads):
        try:
            return _run_study(config)
        except (KeyboardInterrupt, SystemExit) as error:
            if isinstance(error, SystemExit) and not _is_lightning_interrupt(error):
                raise
            raise StudyInterrupted(_interrupted_message(config)) from None


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C during a study; the message says what is saved and how to resume."""


def _is_lightning_interrupt(error: SystemExit) -> bool:
    # Lightning turns Ctrl-C inside a fit into sys.exit(1), raised while handling the KeyboardInterrupt.
    return error.code == 1 and isinstance(error.__context__, KeyboardInterrupt)


def _interrupted_message(config: StudyConfig) -> str:
    study_dir = Path(config.study_dir)
    if not (study_dir / "masks.json").is_file():
        return (
            f"Study {config.name!r} interrupted while preparing {study_dir}; finished pretraining epochs are kept. "
            "Rerun the same command to resume."
        )
    finished = len(list((study_dir / "trials").glob("*.json")))
    return (
        f"Study {config.name!r} interrupted: {finished} trials finished and saved in {study_dir / 'trials'}. "
        "Rerun the same command to resume; finished trials are not run again."
    )


def _run_study(config: StudyConfig) -> dict[str, Any] | None:
    study_dir = Path(config.study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    with exclusive(study_dir):
        check_study_dir(config)
        ensure_pretrained(config)
        entries = ensure_masks(config)
    if config.prepare_only:
        rank_zero_info(f"Study {config.name!r} prepared in {study_dir}: {len(entries)} masks.")
        return None
    trials = plan_trials(config, entries)
    shard_index, shard_count = parse_shard(config.shard)
    mine = [t for t in trials if t.index % shard_count == shard_index]
    pending = [t for t in mine if not trial_path(study_dir, t.trial_id).is_file()]
    rank_zero_info(
        f"Study {config.name!r}: {len(entries)} masks x {config.repeats} repeats = {len(trials)} trials; "
        f"this run: {len(mine)} ({len(mine) - len(pending)} already done)."
    )
    if pending:
        with tqdm(total=len(mine), initial=len(mine) - len(pending), desc=config.name, unit="trial",
                  file=sys.stderr, dynamic_ncols=True) as bar:  # fmt: skip
            run_pending(config, pending, bar.update)
    return write_report(config, trials)


# ------------------------------------------------------------------------------------------------------ report
def write_report(config: StudyConfig, trials: list[Trial]) -> dict[str, Any] | None:
    """``results.csv`` from the finished trials; summary, figures and W&B summary once all are finished."""
    study_dir = Path(config.study_dir)
    records = []
    for trial in trials:
        path = trial_path(study_dir, trial.trial_id)
        if path.is_file():
            records.append(report.read_json(path, "Delete it and rerun: that trial is retrained.", report.TRIAL_KEYS))
    if not records:
        return None
    rows = report.write_results_csv(study_dir / "results.csv", records)
    if len(records) < len(trials):
        rank_zero_info(f"{len(records)} of {len(trials)} trials done; summary.json is written when all are.")
        return None
    short = {record["trial_id"]: record["short_retrain_test_acc"] for record in records}
    summary = report.summarize(rows, short)
    report.write_json(study_dir / "summary.json", summary)
    _draw_figures(config, rows, summary)
    if config.wandb:
        _log_summary_once(config, rows, summary)
    rank_zero_info(f"Study {config.name!r} done: {json.dumps(summary)}")
    return summary


def _draw_figures(config: StudyConfig, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """The two scatter plots; a failed write (a full disk) costs only the figures, said in one line."""
    study_dir = Path(config.study_dir)
    for name, metric in (("scatter_acc.png", "final_test_acc"), ("scatter_loss.png", "final_test_loss")):
        try:
            report.scatter_plot(study_dir / name, rows, summary, metric, config.name)
        except OSError as error:
            rank_zero_warn(
                f"results.csv and summary.json are complete in {study_dir}, but {name} was not written "
                f"({error.strerror or error}). Free space and rerun the same command to draw the figures."
            )


def _log_summary_once(config: StudyConfig, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """A rerun of a finished study does not add another W&B summary run for the same results."""
    study_dir = Path(config.study_dir)
    digest = hashlib.sha256((study_dir / "results.csv").read_bytes()).hexdigest()
    marker = study_dir / _WANDB_MARKER
    if marker.is_file() and marker.read_text().strip() == digest:
        return
    report.log_summary_run(study_dir, config.name, config.wandb_project, rows, summary)
    write_atomic(marker, digest + "\n")
