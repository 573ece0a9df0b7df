"""The lmms-eval tiny task's data in a working folder, and running there offline (the lmms-eval tests' fixtures)."""

import os
from pathlib import Path

from lightning_prune.evaluation.tiny_task import write_tiny_task_data


def write_task_folder(tmp_path_factory, name: str, samples: int) -> Path:
    """A working folder holding `data/lightning_prune_tiny/` (`samples` videos of 16 frames, 32x32) as the task
    expects: the writer's paths are relative to where lmms-eval will run, as a user runs it."""
    folder = tmp_path_factory.mktemp(name)
    previous = Path.cwd()
    os.chdir(folder)
    try:
        write_tiny_task_data("data", samples=samples, frames=16, size=32)
    finally:
        os.chdir(previous)
    return folder


def enter_task_folder(folder: Path, monkeypatch) -> Path:
    """Run in `folder`, offline, with lmms-eval's and Hugging Face's caches inside it."""
    monkeypatch.chdir(folder)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(folder / "hf_home"))
    monkeypatch.setenv("LMMS_EVAL_DATASETS_CACHE", str(folder / "datasets_cache"))
    return folder
