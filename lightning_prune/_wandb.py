"""Closing a W&B run: the one place that does it (the CLI after a command, the study after each of its runs)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import WandbLogger


def finish_wandb(logger: Any) -> None:
    """Close ``logger``'s W&B run if it started one; anything else (another logger, False, None) is left alone.

    WandbLogger adopts a run left open in the process, so the next fit in this process (a study's next trial, a
    second CLI call in tests or notebooks) would log into this one's run.
    """
    # `_experiment` is the only way to ask whether the run was started: the public `experiment` property starts one.
    if isinstance(logger, WandbLogger) and logger._experiment is not None:
        logger.experiment.finish()
