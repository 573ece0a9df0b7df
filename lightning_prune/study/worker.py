"""The entry point of every executor: run a unit of trials and write their records, with the pretrained weights
and the DataModule kept per process so that a worker loads them once."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from lightning_prune.study.batched_path import run_batched_trials
from lightning_prune.study.building import build_datamodule
from lightning_prune.study.process_context import cpu_threads, quiet_lightning
from lightning_prune.study.report import write_json
from lightning_prune.study.single_path import run_single_trial
from lightning_prune.study.spec import StudyConfig
from lightning_prune.study.trial import Trial, trial_path
from lightning_prune.study.wandb_runs import log_trial_run
from lightning_prune.study.weights import load_network_state


@functools.lru_cache(maxsize=2)
def _cached_state(path: str, mtime: float) -> dict[str, torch.Tensor]:
    return load_network_state(Path(path))


_DATAMODULES: dict[tuple[str, int | None], Any] = {}


def _cached_datamodule(config: StudyConfig, gpu: int | None):
    key = (repr(config.data), gpu)
    if key not in _DATAMODULES:
        _DATAMODULES.clear()
        _DATAMODULES[key] = build_datamodule(config, gpu)
    return _DATAMODULES[key]


def run_unit(config: StudyConfig, trials: list[Trial], batched: bool, gpu: int | None = None) -> list[str]:
    """Run trials (one, or several batched) and write their records.

    Returns:
        The ids of the trials written.
    """
    study_dir = Path(config.study_dir)
    source = study_dir / "pretrained.ckpt"
    state = _cached_state(str(source), source.stat().st_mtime)
    datamodule = _cached_datamodule(config, gpu)
    with quiet_lightning(), cpu_threads(config.cpu_threads):
        if batched:
            records = run_batched_trials(config, trials, state, datamodule, gpu)
            for record in records:
                log_trial_run(config, record)
        else:
            records = [run_single_trial(config, trial, state, datamodule, gpu) for trial in trials]
    for record in records:
        write_json(trial_path(study_dir, record["trial_id"]), record)
    return [record["trial_id"] for record in records]
