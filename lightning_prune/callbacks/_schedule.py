"""The `Pruning` callback's side of iterative schedules: units per step, indices in original numbering, the record
accumulated over steps, and the `continue` retrain recipe. The maths is in `lightning_prune.pruning.schedule`."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Trainer

from lightning_prune.pruning.schedule import cumulative_counts, exclude_pruned, to_original
from lightning_prune.pruning.structure import PruningStructure

RECIPES = ("restart", "continue")


def check_structure(structure: PruningStructure, steps: int, layers: dict[str, float], mode: str) -> None:
    """Refuse schedules the record cannot replay: transformer decoder units (LLM MLP channels, KV-grouped heads;
    one-step record and equal-per-group choice) and, in physical mode, attention heads (removing heads swaps the
    attention module, so a later step would not find the layer again; mask mode keeps it).

    Raises:
        ValueError: For a schedule of more than one step over such units.
    """
    from lightning_prune.pruning.transformer import DecoderStructure

    if steps <= 1:
        return
    if isinstance(structure, DecoderStructure):
        raise ValueError(
            f"`schedule` must be None (one step) for transformer decoder units (LLM MLP channels and attention "
            f"heads), got {steps} steps; iterative schedules support CNN/ViT channels and, in mask mode, ViT heads."
        )
    heads = [name for name in structure.select(layers) if structure.layers[name].kind == "heads"]
    if heads and mode == "physical":
        raise ValueError(
            f"`schedule` must be None (one step) for attention heads in physical mode, got {steps} steps over "
            f"{heads}; use `mode: mask` for iterative head pruning."
        )


def original_units(structure: PruningStructure, names: list[str], pruned: dict[str, list[int]], mode: str) -> dict:
    """Units of each layer in the unpruned network (physical mode: the structure has lost the pruned ones)."""
    removed = pruned if mode == "physical" else {}
    return {name: structure.layers[name].units + len(removed.get(name, [])) for name in names}


def step_counts(
    structure: PruningStructure, layers: dict[str, float], pruned: dict[str, list[int]], mode: str, fraction: float
) -> dict[str, int]:
    """`{layer: units to prune at this step}` (> 0 only): the cumulative target less what earlier steps pruned."""
    ratios = structure.select(layers)
    targets = cumulative_counts(ratios, original_units(structure, list(ratios), pruned, mode), fraction)
    counts = {name: target - len(pruned.get(name, [])) for name, target in targets.items()}
    return {name: count for name, count in counts.items() if count > 0}


def remaining_scores(scores: dict[str, torch.Tensor], pruned: dict[str, list[int]], mode: str) -> dict:
    """Mask mode scores the whole network: masked units get +inf so that no step chooses them again."""
    return exclude_pruned(scores, pruned) if mode == "mask" and pruned else scores


def in_original_numbering(
    choice: dict[str, list[int]], structure: PruningStructure, pruned: dict[str, list[int]], mode: str
) -> dict[str, list[int]]:
    """A step's chosen indices in the unpruned network's numbering (physical mode numbers the remaining units)."""
    if mode != "physical" or not pruned:
        return {name: sorted(idxs) for name, idxs in choice.items()}
    units = original_units(structure, list(choice), pruned, mode)
    return {name: to_original(idxs, units[name], pruned.get(name, [])) for name, idxs in choice.items()}


def accumulate_history(before: dict[str, Any], step: dict[str, Any], cumulative: dict[str, list[int]]) -> dict:
    """The replay record after one more physical step: Torch-Pruning histories concatenated in order (each step's
    entries number the network as it was then, which is how `load_pruning_history` replays them), heads as the
    cumulative original indices (they are removed in one go on a fresh network)."""
    if not before.get("history") and not before.get("heads"):
        return step  # the first step (also keeps the transformer-decoder keys of a one-step run)
    heads = {name: cumulative[name] for name in {*before.get("heads", {}), *step.get("heads", {})}}
    return {**before, "history": [*before.get("history", []), *step.get("history", [])], "heads": heads}


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
