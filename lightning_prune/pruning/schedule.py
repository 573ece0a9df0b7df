"""Iterative pruning schedules: at which epochs to prune, and how many units of each layer in total after each step.

Two YAML forms of the `Pruning` callback's `schedule` (exactly one):

    schedule: {steps: 4, every_n_epochs: 2}     # equal steps: fractions 1/4, 2/4, 3/4, 4/4 of the `layers` ratios
    schedule: {at: [[2, 0.25], [5, 0.6], [8, 1.0]]}   # [epoch, fraction of the `layers` ratios] pairs

The first step is at the callback's prune epoch (`prune_at_epoch`, or 0 for `prune_at: start`); in the `at` form
its first epoch must be that epoch. Torch-Pruning's iterative semantics (its `linear_scheduler`: the target ratio
after step k of n is ratio * k/n, counted on the original, unpruned units): after a step with fraction `f`,
`floor(ratio * f * units_original)` units of a layer are pruned in total, so each step prunes the difference to the
previous step's total. Rounded down like one-step pruning (`pruned_count`), so the last step equals it; Torch-Pruning
itself keeps `int(units * (1 - r))` units, i.e. rounds the pruned count up when `r * units` is not whole.

Also the steps' bookkeeping (units per step, indices in original numbering, the record accumulated over steps,
schedules a structure cannot replay). Pure Python and torch; no Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lightning_prune._checks import is_int
from lightning_prune.pruning.structure import PruningStructure, pruned_count
from lightning_prune.pruning.transformer import DecoderStructure

_KEYS = ("steps", "every_n_epochs", "at")


@dataclass(frozen=True)
class ScheduleStep:
    """One pruning step: at the start of training epoch `epoch`, reach `fraction` of the configured ratios."""

    epoch: int
    fraction: float


def _increasing(values: list) -> bool:
    return all(values[i] < values[i + 1] for i in range(len(values) - 1))


def schedule_problems(schedule: dict | None, criterion: str, budget: dict | None) -> list[str]:
    """Every problem with a `schedule` argument, each naming the key, the value and what is allowed."""
    if schedule is None:
        return []
    if not isinstance(schedule, dict):
        return [f"`schedule` must be {{steps: N, every_n_epochs: E}} or {{at: [[epoch, fraction], ...]}}, "
                f"got {schedule!r}."]
    problems = []
    unknown = sorted(set(schedule) - set(_KEYS))
    if unknown:
        problems.append(f"`schedule` keys must be among {list(_KEYS)}, got {unknown}.")
    if criterion == "explicit":
        problems.append("`schedule` must be None for criterion 'explicit' (the indices are given once).")
    if budget is not None:
        problems.append("`schedule` must be None when `budget` is given (a budget is reached in one step).")
    equal = "steps" in schedule or "every_n_epochs" in schedule
    if equal and "at" in schedule:
        return problems + [
            f"`schedule` must use one form, {{steps, every_n_epochs}} or {{at}}, got both: {schedule!r}."
        ]
    if equal:
        for key in ("steps", "every_n_epochs"):
            value = schedule.get(key)
            if not is_int(value, 1):
                problems.append(f"`schedule.{key}` must be an integer >= 1, got {value!r}.")
        return problems
    if "at" not in schedule:
        return problems + [f"`schedule` must give `steps` and `every_n_epochs`, or `at`, got {schedule!r}."]
    return problems + _pairs_problems(schedule["at"])


def _pairs_problems(pairs: object) -> list[str]:
    shape = "a non-empty list of [epoch, fraction] pairs"
    if not isinstance(pairs, (list, tuple)) or not pairs or not all(
        isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs
    ):
        return [f"`schedule.at` must be {shape}, got {pairs!r}."]
    epochs, fractions = [p[0] for p in pairs], [p[1] for p in pairs]
    problems = []
    if not all(is_int(e, 0) for e in epochs) or not _increasing(epochs):
        problems.append(f"`schedule.at` epochs must be increasing integers >= 0, got {epochs}.")
    numbers = all(isinstance(f, (int, float)) and not isinstance(f, bool) for f in fractions)
    if not numbers or not all(0 < f <= 1 for f in fractions) or not _increasing(fractions):
        problems.append(f"`schedule.at` fractions must increase within (0, 1], got {fractions}.")
    return problems


def schedule_steps(schedule: dict | None, first_epoch: int) -> list[ScheduleStep]:
    """The steps of a validated `schedule` (None: one step at `first_epoch` reaching the full ratios).

    Raises:
        ValueError: If the `at` form's first epoch is not `first_epoch`.
    """
    if schedule is None:
        return [ScheduleStep(first_epoch, 1.0)]
    if "at" in schedule:
        steps = [ScheduleStep(int(epoch), float(fraction)) for epoch, fraction in schedule["at"]]
        if steps[0].epoch != first_epoch:
            raise ValueError(
                f"`schedule.at` must start at the prune epoch ({first_epoch}, from `prune_at_epoch`/`prune_at`), "
                f"got first epoch {steps[0].epoch}."
            )
        return steps
    n, every = schedule["steps"], schedule["every_n_epochs"]
    return [ScheduleStep(first_epoch + k * every, (k + 1) / n) for k in range(n)]


def cumulative_counts(ratios: dict[str, float], original_units: dict[str, int], fraction: float) -> dict[str, int]:
    """`{layer: units pruned in total after a step of `fraction`}`: `floor(ratio * fraction * units_original)`."""
    return {name: pruned_count(ratio * fraction, original_units[name]) for name, ratio in ratios.items()}


def kept_units(original: int, pruned: list[int]) -> list[int]:
    """Original indices of the units still present, in order (position i = unit i of the pruned layer)."""
    removed = set(pruned)
    return [unit for unit in range(original) if unit not in removed]


def to_original(current: list[int], original: int, pruned: list[int]) -> list[int]:
    """Indices into a layer already stripped of `pruned` (physical mode) -> indices in the original numbering."""
    kept = kept_units(original, pruned)
    return sorted(kept[i] for i in current)


def exclude_pruned(scores: dict[str, torch.Tensor], pruned: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Scores with already-pruned units (mask mode) set to +inf, so no ranking chooses them again."""
    result = {}
    for name, values in scores.items():
        values = values.clone().float()
        if pruned.get(name):
            values[torch.as_tensor(pruned[name], dtype=torch.long)] = torch.inf
        result[name] = values
    return result


def merge_indices(before: dict[str, list[int]], step: dict[str, list[int]]) -> dict[str, list[int]]:
    """Cumulative `{layer: sorted pruned indices}` (original numbering) after adding one step's indices."""
    merged = {name: list(idxs) for name, idxs in before.items()}
    for name, idxs in step.items():
        merged[name] = sorted(set(merged.get(name, [])) | set(idxs))
    return merged


def check_structure(structure: PruningStructure, steps: int, layers: dict[str, float], mode: str) -> None:
    """Refuse schedules the record cannot replay: transformer decoder units (LLM MLP channels, KV-grouped heads;
    one-step record and equal-per-group choice) and, in physical mode, attention heads (removing heads swaps the
    attention module, so a later step would not find the layer again; mask mode keeps it).

    Raises:
        ValueError: For a schedule of more than one step over such units.
    """
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


def schedule_step_problem(structure: Any, layers: dict[str, float], steps: list[Any]) -> str | None:
    """Why a step of a multi-step schedule would prune nothing (its floor is the previous step's), or None."""
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
