"""lmms-eval runs offline: a tiny task's data written once per session, every Hugging Face cache under tmp folders."""

import os
from pathlib import Path

import pytest

from lightning_prune.evaluation.tiny_task import write_tiny_task_data


@pytest.fixture(scope="session")
def task_folder(tmp_path_factory):
    """A working folder holding `data/lightning_prune_tiny/` (4 videos of 16 frames, 32x32) as the task expects."""
    folder = tmp_path_factory.mktemp("lmms_run")
    previous = Path.cwd()
    os.chdir(folder)  # the writer's paths are relative to where lmms-eval will run, as a user runs it
    try:
        write_tiny_task_data("data", samples=4, frames=16, size=32)
    finally:
        os.chdir(previous)
    return folder


@pytest.fixture
def in_task_folder(task_folder, monkeypatch):
    """Run in the task folder, offline, with lmms-eval's and Hugging Face's caches inside it."""
    monkeypatch.chdir(task_folder)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(task_folder / "hf_home"))
    monkeypatch.setenv("LMMS_EVAL_DATASETS_CACHE", str(task_folder / "datasets_cache"))
    return task_folder
