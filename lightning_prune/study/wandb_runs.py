"""The study's W&B runs: one per trial (live for the one-at-a-time path, written after the fact for the batched
path) in the study's group. Offline unless ``WANDB_MODE=online``; never ``wandb.init``: Lightning's WandbLogger."""

from __future__ import annotations

import json
import os
from typing import Any

from lightning_prune.outcome import MetricNames, post_metrics
from lightning_prune.study.spec import StudyConfig
from lightning_prune.study.trial import PRE_KEYS


def wandb_logger(config: StudyConfig, name: str, job_type: str, extra: dict[str, Any] | None = None):
    """A W&B run in the study's group (offline unless WANDB_MODE=online), or False when W&B is off."""
    if not config.wandb:
        return False
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(
        project=config.wandb_project,
        name=name,
        group=config.name,
        job_type=job_type,
        save_dir=str(config.study_dir),
        offline=os.environ.get("WANDB_MODE", "offline") != "online",
        config=extra or {},
    )


def finish_logger(logger: Any) -> None:
    """Close a W&B run so the next trial in this process starts its own."""
    if logger and getattr(logger, "_experiment", None) is not None:
        logger.experiment.finish()


def trial_identity(fields: dict[str, Any]) -> dict[str, Any]:
    """What a trial's W&B run is filtered by: mask, repeat, seed, criterion and the pruned filters."""
    keys = ("mask_id", "repeat", "seed", "criterion", "layer_masks")
    return {key: json.dumps(fields[key]) if key == "layer_masks" else fields[key] for key in keys}


def log_trial_run(config: StudyConfig, record: dict[str, Any]) -> None:
    """The W&B run of a batched trial, written after the fact: its history, then ``pre/*`` and ``post/*``."""
    logger = wandb_logger(config, record["trial_id"], "trial", trial_identity(record))
    if not logger:
        return
    try:
        for entry in record["history"]:
            logger.log_metrics(MetricNames(split="test").logged(entry), step=int(entry["epoch"]))
        pre = {key.replace("pruned_", "pre/"): record[key] for key in PRE_KEYS}
        logger.log_metrics({**pre, **post_metrics(record)})
    finally:
        finish_logger(logger)
