"""lmms-eval runs offline: a tiny task's data written once per session, every Hugging Face cache under tmp folders."""

import pytest
from _support.lmms_task import enter_task_folder, write_task_folder


@pytest.fixture(scope="session")
def task_folder(tmp_path_factory):
    """The tiny task with 4 questions."""
    return write_task_folder(tmp_path_factory, "lmms_run", samples=4)


@pytest.fixture
def in_task_folder(task_folder, monkeypatch):
    """Run in the task folder, offline, with lmms-eval's and Hugging Face's caches inside it."""
    return enter_task_folder(task_folder, monkeypatch)
