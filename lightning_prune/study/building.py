"""What every fit of a study is built from: optimizer factories, the DataModule and the Trainer arguments."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule

from lightning_prune.callbacks._checkpoints import AtomicCheckpointIO
from lightning_prune.study.spec import RecipeConfig, StudyConfig, resolve_class


def optimizer_factory(spec: dict[str, Any]):
    """``{class_path, init_args}`` of a ``torch.optim.Optimizer`` -> a callable taking the parameters."""
    return functools.partial(resolve_class(spec["class_path"], torch.optim.Optimizer), **spec.get("init_args") or {})


def scheduler_factory(spec: dict[str, Any] | None):
    """``{class_path, init_args}`` of an ``LRScheduler`` -> a callable taking the optimizer (None: no schedule)."""
    if spec is None:
        return None
    cls = resolve_class(spec["class_path"], torch.optim.lr_scheduler.LRScheduler)
    return functools.partial(cls, **spec.get("init_args") or {})


def build_datamodule(config: StudyConfig, gpu: int | None = None):
    """The study's DataModule; held tensors follow the trial's GPU when the config puts them on CUDA."""
    init_args = dict(config.data.get("init_args") or {})
    if gpu is not None and str(init_args.get("device") or "").startswith("cuda"):
        init_args["device"] = f"cuda:{gpu}"
    return resolve_class(config.data["class_path"], LightningDataModule)(**init_args)


def seed_datamodule(datamodule: Any, seed: int) -> None:
    """Give a DataModule that shuffles by its own seed the run's seed (the repeat's data order)."""
    if hasattr(datamodule, "seed"):
        datamodule.seed = seed


def trainer_kwargs(config: StudyConfig, recipe: RecipeConfig, gpu: int | None) -> dict[str, Any]:
    """Trainer arguments shared by every fit of the study."""
    if gpu is not None:
        placement = {"accelerator": "gpu", "devices": [gpu]}
    else:
        placement = {"accelerator": config.accelerator, "devices": 1}
    return {
        **placement,
        "max_epochs": recipe.epochs,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "default_root_dir": str(Path(config.study_dir) / "runs"),
        "plugins": [AtomicCheckpointIO()],  # pretrain/last.ckpt is whole or absent, also after a full disk
        **recipe.trainer,
    }
