"""The `Pruning` callback's side of schedules: `max_steps` against the last step, and the `continue` retrain
recipe. The maths (units per step, original numbering, the accumulated record) is in `pruning.schedule`."""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch import LightningModule, Trainer

from lightning_prune.callbacks._measure import start_retrain

RECIPES = ("restart", "continue")


def recipe_problems(recipe: Any) -> list[str]:
    """The problem with a `retrain_recipe` argument, if any."""
    return [] if recipe in RECIPES else [f"`retrain_recipe` must be one of {list(RECIPES)}, got {recipe!r}."]


def next_recipe(trainer: Trainer, module: LightningModule, restart: bool, mode: str) -> None:
    """After a pruning step: `restart` (the module's `start_retrain` and a fresh optimizer and LR schedule over the
    current parameters; always at the first step), else `continue_recipe`."""
    if restart:
        start_retrain(module)
        trainer.strategy.setup_optimizers(trainer)
    else:
        continue_recipe(trainer, mode)


def continue_recipe(trainer: Trainer, mode: str) -> None:
    """`retrain_recipe: continue` after a later step: keep the running recipe.

    Mask mode keeps the optimizer and its LR schedulers as they are (same parameters; momentum and schedule go
    on). Physical mode must build a new optimizer over the new, smaller parameters (`configure_optimizers` of the
    retrain recipe, so moments start at zero), then each LR scheduler gets its previous state back
    (`state_dict`/`load_state_dict`: its epoch counter and last LR) and the new optimizer its last LR.
    """
    if mode == "mask":
        return
    states = [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs]
    trainer.strategy.setup_optimizers(trainer)
    for config, state in zip(trainer.lr_scheduler_configs, states, strict=True):
        config.scheduler.load_state_dict(state)
        for group, lr in zip(config.scheduler.optimizer.param_groups, config.scheduler.get_last_lr(), strict=True):
            group["lr"] = lr


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


def epochs_problem(max_epochs: int | None, steps: list[Any], prune_epoch: int) -> str | None:
    """Why the Trainer's `max_epochs` would end the fit before a pruning step, or None."""
    if max_epochs is None or max_epochs < 0:
        return None
    if len(steps) > 1 and steps[-1].epoch >= max_epochs:
        return (f"`schedule` steps must all start below the Trainer's max_epochs ({max_epochs}), got steps at "
                f"epochs {[step.epoch for step in steps]}: raise `max_epochs` or shorten the schedule.")
    if prune_epoch >= max_epochs:
        return (f"`prune_at_epoch` must be below the Trainer's max_epochs ({max_epochs}), got {prune_epoch}: the fit "
                "would end before pruning and train the unpruned model; raise `max_epochs` or lower `prune_at_epoch`.")
    return None
