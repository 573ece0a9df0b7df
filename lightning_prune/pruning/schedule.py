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

Pure Python and torch; no Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_prune.pruning.structure import pruned_count

_KEYS = ("steps", "every_n_epochs", "at")


@dataclass(frozen=True)
class ScheduleStep:
    """One pruning step: at the start of training epoch `epoch`, reach `fraction` of the configured ratios."""

    epoch: int
    fraction: float


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
            if not _is_int(value) or value < 1:
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
    if not all(_is_int(e) and e >= 0 for e in epochs) or not _increasing(epochs):
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
