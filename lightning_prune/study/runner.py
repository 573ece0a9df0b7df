"""Run a study end to end: check ``study_dir``, prepare, pick the retraining path, run the pending trials of this
shard with a progress bar, and report (``results.csv`` always; ``summary.json``, figures and the W&B summary run
once every trial of the study is done)."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from tqdm.auto import tqdm

from lightning_prune.study import report
from lightning_prune.study.executors import Unit, execute, visible_gpus
from lightning_prune.study.prepare import check_study_dir, ensure_masks, ensure_pretrained, exclusive, plan_trials
from lightning_prune.study.spec import StudyConfig, parse_shard, validate
from lightning_prune.study.trial import Trial, cpu_threads, trial_path

_WANDB_MARKER = ".wandb_summary"


def run_study(config: StudyConfig) -> dict[str, Any] | None:
    """Run (or resume) a study.

    Returns:
        The summary when every trial of the study is finished, else None.

    Raises:
        ValueError: for an invalid config, or a ``study_dir`` holding a study of another config (before compute).
    """
    validate(config)
    with cpu_threads(config.cpu_threads):
        return _run_study(config)


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
        batched = use_batched_path(config, pending)
        units = make_units(config, pending, batched)
        with tqdm(total=len(mine), initial=len(mine) - len(pending), desc=config.name, unit="trial",
                  file=sys.stderr, dynamic_ncols=True) as bar:  # fmt: skip
            execute(config, units, bar.update)
    return write_report(config, trials)


# ------------------------------------------------------------------------------------------------ path choice
def make_units(config: StudyConfig, pending: list[Trial], batched: bool) -> list[Unit]:
    """One unit per trial, or chunks of ``batch_masks`` trials sharing a repeat (one data order) when batched."""
    if not batched:
        return [([trial], False) for trial in pending]
    by_repeat: dict[int, list[Trial]] = {}
    for trial in pending:
        by_repeat.setdefault(trial.repeat, []).append(trial)
    size = config.batch_masks
    return [(group[i : i + size], True) for group in by_repeat.values() for i in range(0, len(group), size)]


def use_batched_path(config: StudyConfig, pending: list[Trial]) -> bool:
    """Whether to retrain masks batched: never with ``off``; with ``on`` when the network allows it (else an
    error); with ``auto`` on a GPU always, on a CPU when a short timing says a batched step per mask is faster.

    Raises:
        ValueError: if ``batching`` is ``on`` and the network cannot be batched.
    """
    from lightning_prune.models import build_model
    from lightning_prune.modules.batched import supports_batching

    if config.batching == "off" or config.module is not None:
        return False
    network = build_model(config.model, **config.model_kwargs)
    if not supports_batching(network):
        if config.batching == "on":
            raise ValueError(
                f"`--batching on` needs a network without BatchNorm, Dropout or buffers, got {config.model!r}. "
                "Use --batching auto or off."
            )
        return False
    if config.batching == "on" or visible_gpus(config):
        return True
    if len(pending) < 2:
        return False
    single, per_copy = time_training_steps(config, network, pending[: config.batch_masks])
    rank_zero_info(
        f"CPU training step: {single * 1e3:.1f} ms one model at a time, {per_copy * 1e3:.1f} ms per model batched; "
        f"retraining {'batched' if per_copy < single else 'one at a time'}."
    )
    return per_copy < single


def _batch_size(config: StudyConfig) -> int:
    return int(config.data.get("init_args", {}).get("batch_size", 256))


def time_training_steps(config: StudyConfig, network: torch.nn.Module, trials: list[Trial], steps: int = 3):
    """Seconds of one training step of one physically pruned network vs per copy of the batched model (after a
    warm-up step each).

    Per-trial costs outside the step (building a Trainer, a W&B run, the pruning graph) favour batching further,
    so this comparison is the conservative one.
    """
    from lightning_prune.modules.batched import BatchedMaskedClassifier
    from lightning_prune.pruning import PruningStructure

    images = torch.randn(_batch_size(config), *network.input_shape)
    batched = BatchedMaskedClassifier([t.layer_masks for t in trials], config.model, config.model_kwargs)
    PruningStructure(network, images[:1]).prune(trials[0].layer_masks)
    with torch.no_grad():
        labels = torch.randint(0, network(images[:1]).shape[-1], (len(images),))

    def seconds_per_step(module: torch.nn.Module, loss_of) -> float:
        optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=1e-6)
        for step in range(steps + 1):
            if step == 1:
                started = time.perf_counter()
            optimizer.zero_grad()
            loss_of(module(images)).backward()
            optimizer.step()
        return (time.perf_counter() - started) / steps

    single = seconds_per_step(network, lambda logits: F.cross_entropy(logits, labels))
    copies = seconds_per_step(batched, lambda logits: F.cross_entropy(logits.flatten(0, 1), labels.repeat(len(trials))))
    return single, copies / len(trials)


# ------------------------------------------------------------------------------------------------------ report
def write_report(config: StudyConfig, trials: list[Trial]) -> dict[str, Any] | None:
    """``results.csv`` from the finished trials; summary, figures and W&B summary once all are finished."""
    study_dir = Path(config.study_dir)
    records = []
    for trial in trials:
        path = trial_path(study_dir, trial.trial_id)
        if path.is_file():
            records.append(json.loads(path.read_text()))
    if not records:
        return None
    rows = report.write_results_csv(study_dir / "results.csv", records)
    if len(records) < len(trials):
        rank_zero_info(f"{len(records)} of {len(trials)} trials done; summary.json is written when all are.")
        return None
    short = {record["trial_id"]: record["short_retrain_test_acc"] for record in records}
    summary = report.summarize(rows, short)
    report.write_json(study_dir / "summary.json", summary)
    report.scatter_plot(study_dir / "scatter_acc.png", rows, summary, "final_test_acc", config.name)
    report.scatter_plot(study_dir / "scatter_loss.png", rows, summary, "final_test_loss", config.name)
    if config.wandb:
        _log_summary_once(config, rows, summary)
    rank_zero_info(f"Study {config.name!r} done: {json.dumps(summary)}")
    return summary


def _log_summary_once(config: StudyConfig, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """A rerun of a finished study does not add another W&B summary run for the same results."""
    study_dir = Path(config.study_dir)
    digest = hashlib.sha256((study_dir / "results.csv").read_bytes()).hexdigest()
    marker = study_dir / _WANDB_MARKER
    if marker.is_file() and marker.read_text().strip() == digest:
        return
    report.log_summary_run(study_dir, config.name, config.wandb_project, rows, summary)
    report.write_atomic(marker, digest + "\n")
