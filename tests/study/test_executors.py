"""Local worker processes and Ray run the missing trials of a study and reproduce its results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from study_fakes import copy_study

from lightning_prune.study import executors
from lightning_prune.study.report import read_results_csv
from lightning_prune.study.runner import run_study


def _rows(study_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in read_results_csv(study_dir / "results.csv")]


def _missing(finished, destination: Path, count: int, **overrides):
    config, _ = finished
    total = len(list(Path(config.study_dir, "trials").glob("*.json")))
    return copy_study(config, destination, keep=total - count, **overrides)


def test_local_workers_run_missing_trials_in_spawned_processes(finished, tmp_path):
    config, summary = finished
    copy = _missing(finished, tmp_path / "copy", 1, workers=2)  # one unit: the pool spawns one worker
    assert run_study(copy) == summary
    assert _rows(tmp_path / "copy") == _rows(Path(config.study_dir))
    record = json.loads(sorted((tmp_path / "copy" / "trials").glob("*.json"))[-1].read_text())
    assert record["path"] == "single"


def test_ray_executor_runs_trials_as_tasks(finished, tmp_path):
    ray = pytest.importorskip("ray")
    config, summary = finished
    # Each task takes both CPUs, so the two tasks run one after the other in one (reused) Ray worker.
    copy = _missing(finished, tmp_path / "copy", 2, executor="ray", cpus_per_trial=2.0)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert run_study(copy) == summary
    finally:
        ray.shutdown()
    assert _rows(tmp_path / "copy") == _rows(Path(config.study_dir))


def test_execute_without_units_does_nothing(finished):
    config, _ = finished
    executors.execute(config, [], on_done=lambda n: pytest.fail("nothing to report"))
    assert executors.visible_gpus(config) == 0  # accelerator cpu


def test_executor_registry_matches_the_config_choices():
    import typing

    from lightning_prune.study.spec import StudyConfig

    choices = typing.get_args(typing.get_type_hints(StudyConfig)["executor"])
    assert executors.executor_names() == choices == ("local", "ray")


def test_execute_refuses_an_unregistered_executor(finished):
    import dataclasses

    config, _ = finished
    bad = dataclasses.replace(config, executor="slurm")
    with pytest.raises(ValueError, match=r"`executor` must be one of \['local', 'ray'\], got 'slurm'"):
        executors.execute(bad, [([], False)], on_done=lambda n: None)
