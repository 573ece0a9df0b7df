"""Shared test set-up: everything offline, nothing written outside the test's temporary folders."""


import pytest
import torch

# One thread: small models on a shared 2-core machine run many times faster than with two competing threads.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _offline_wandb(tmp_path, monkeypatch):
    """W&B in offline mode with every folder it writes under the test's tmp_path."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        folder = tmp_path / var.lower()
        folder.mkdir(exist_ok=True)
        monkeypatch.setenv(var, str(folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    yield
