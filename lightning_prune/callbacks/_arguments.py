"""The `Pruning` callback's constructor checks: every problem at once, each naming the argument and the choices."""

from __future__ import annotations

import math
from typing import Any

from lightning_prune.pruning.importance import CRITERIA
from lightning_prune.pruning.structure import check_ratios


def argument_problems(
    criterion, layers, indices, mode, prune_at, prune_at_epoch, global_pruning, calibration_batches, l1_reduction
) -> list[str]:
    """Every problem with the constructor arguments, each naming the argument and the valid choices."""
    problems = []
    if criterion not in CRITERIA:
        problems.append(f"`criterion` must be one of {list(CRITERIA)}, got {criterion!r}.")
    if mode not in ("physical", "mask"):
        problems.append(f"`mode` must be one of ['physical', 'mask'], got {mode!r}.")
    if prune_at is not None and prune_at_epoch is not None:
        problems.append("Can't provide both `prune_at` and `prune_at_epoch`. Choose one.")
    elif prune_at is None and prune_at_epoch is None:
        problems.append("`prune_at: start` or `prune_at_epoch: N` must be given, got neither.")
    elif prune_at is not None and prune_at != "start":
        problems.append(f"`prune_at` must be 'start' or None, got {prune_at!r}.")
    elif prune_at_epoch is not None and (not isinstance(prune_at_epoch, int) or prune_at_epoch < 0):
        problems.append(f"`prune_at_epoch` must be an integer >= 0, got {prune_at_epoch!r}.")
    if criterion == "explicit":
        if not indices:
            problems.append("`indices` must give {layer: pruned indices} for criterion 'explicit', got none.")
        elif isinstance(indices, dict) and any(not units for units in indices.values()):
            empty = [name for name, units in indices.items() if not units]
            problems.append(
                f"`indices` must list at least one unit to prune per layer, got none for {empty} "
                "(that layer would train unpruned): leave it out or list its units."
            )
        if layers:
            problems.append("`layers` must be empty for criterion 'explicit' (the layers are the keys of `indices`).")
        if global_pruning:
            problems.append("`global_pruning` must be false for criterion 'explicit'.")
    else:
        if indices:
            problems.append(f"`indices` must be None unless criterion is 'explicit', got criterion {criterion!r}.")
        if not layers:
            problems.append("`layers` must map at least one glob pattern to a ratio, e.g. {'conv1': 0.5}, got none.")
        else:
            try:
                check_ratios(layers)
            except ValueError as error:
                problems.append(str(error))
    if isinstance(calibration_batches, bool) or not isinstance(calibration_batches, int) or calibration_batches < 1:
        problems.append(f"`calibration_batches` must be an integer >= 1, got {calibration_batches!r}.")
    if l1_reduction not in ("sum", "mean"):
        problems.append(f"`l1_reduction` must be one of ['sum', 'mean'], got {l1_reduction!r}.")
    return problems


def steps_problem(trainer: Any, last_epoch: int) -> str | None:
    """Why ``max_steps`` would end the fit before the (last) pruning epoch, once the train loader is known."""
    max_steps, batches = trainer.max_steps, trainer.num_training_batches
    if max_steps is None or max_steps < 0 or not math.isfinite(batches) or batches <= 0:
        return None
    per_epoch = math.ceil(batches / max(1, trainer.accumulate_grad_batches))
    needed = last_epoch * per_epoch
    if max_steps > needed:
        return None
    return (
        f"`trainer.max_steps` must be above the {needed} optimizer steps before pruning at epoch {last_epoch} "
        f"({per_epoch} per epoch), got {max_steps}: the fit would end unpruned. Raise `max_steps` (or use -1) "
        "or prune earlier."
    )


def schedule_step_problem(structure: Any, layers: dict[str, float], steps: list[Any]) -> str | None:
    """Why a step of a multi-step schedule would prune nothing (its floor is the previous step's), or None."""
    from lightning_prune.pruning.schedule import cumulative_counts

    ratios = structure.select(layers)
    units = {name: structure.layers[name].units for name in ratios}
    previous = 0
    for number, step in enumerate(steps, start=1):
        total = sum(cumulative_counts(ratios, units, step.fraction).values())
        if total <= previous:
            return (
                f"`schedule` step {number} (epoch {step.epoch}, fraction {step.fraction:g}) must prune at least one "
                f"unit, got 0 (floor(ratio x fraction x units) is {total} in all, as after the step before): "
                "use fewer steps or larger ratios."
            )
        previous = total
    return None
