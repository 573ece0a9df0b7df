"""Fixtures of the study tests (the helpers live in `study_fakes.py`)."""

from pathlib import Path

import pytest
from study_fakes import tiny_study, write_tiny_mnist

from lightning_prune.study.runner import run_study
from lightning_prune.study.spec import MaskConfig


@pytest.fixture(scope="session")
def tiny_mnist_root(tmp_path_factory) -> Path:
    return write_tiny_mnist(tmp_path_factory.mktemp("tiny_mnist"))


@pytest.fixture(scope="session")
def finished(tmp_path_factory, tiny_mnist_root):
    """One finished study with W&B on: 4 sampled masks + the l1 and oracle masks, 2 repeats."""
    base = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as patch:
        for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
            patch.setenv(var, str(base / var.lower()))
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_SILENT", "true")
        masks = MaskConfig(layers={"conv1": 0.5}, sample=4, seed=0, criteria=["l1", "oracle"], calibration_batches=2)
        config = tiny_study(tiny_mnist_root, base / "study", wandb=True, masks=masks)
        summary = run_study(config)
    return config, summary
