"""The `Pruning` callback's YAML arguments -> a `PrunePlan`, and every problem with them. Pure Python; no Lightning.

The shipped configs give a criterion's options as flat arguments (`l1_reduction`, `seed`, `indices`,
`taylor_variant`); `criterion_options` gives them by the criterion class's keywords and overrides the flat ones.
"""

from __future__ import annotations

from typing import Any

from lightning_prune.pruning.importance import TAYLOR_VARIANTS
from lightning_prune.pruning.plan import PrunePlan

# The flat arguments that are a criterion's options (kept for the shipped configs): criterion -> (option, argument).
FLAT_OPTIONS = {"l1": ("reduction", "l1_reduction"), "random": ("seed", "seed"), "explicit": ("indices", "indices"),
                "taylor": ("variant", "taylor_variant")}
L1_REDUCTIONS = ("sum", "mean")


def merged_options(criterion: str, flat: dict[str, Any], given: dict[str, Any] | None) -> dict[str, Any]:
    """The criterion's options: its flat argument (`flat`: argument -> value), overridden by `given`."""
    option, argument = FLAT_OPTIONS.get(criterion, (None, None))
    options = {option: flat[argument]} if option else {}
    if criterion == "explicit" and isinstance(flat["indices"], dict):  # YAML lists or tuples -> lists
        options["indices"] = {name: list(idxs) for name, idxs in flat["indices"].items()}
    return {**options, **(given or {})}


def flat_problems(criterion: str, flat: dict[str, Any]) -> list[str]:
    """Problems of the flat arguments that the criterion does not read (its own are checked by the plan)."""
    problems = []
    if flat["indices"] and criterion != "explicit":
        problems.append(f"`indices` must be None unless criterion is 'explicit', got criterion {criterion!r}.")
    if criterion != "l1" and flat["l1_reduction"] not in L1_REDUCTIONS:
        problems.append(f"`l1_reduction` must be one of {list(L1_REDUCTIONS)}, got {flat['l1_reduction']!r}.")
    if criterion != "taylor" and flat["taylor_variant"] not in TAYLOR_VARIANTS:
        problems.append(f"`taylor_variant` must be one of {list(TAYLOR_VARIANTS)}, got {flat['taylor_variant']!r}.")
    return problems


def plan_from_arguments(
    criterion: str,
    *,
    indices: Any,
    seed: Any,
    l1_reduction: Any,
    taylor_variant: Any,
    criterion_options: dict[str, Any] | None,
    schedule: Any,
    budget: Any,
    layers: dict[str, float] | None,
    **rest: Any,
) -> tuple[PrunePlan, list[str]]:
    """The plan of the callback's arguments and every problem with them (the plan's, then the flat arguments').

    Args:
        criterion: The criterion's name.
        indices, seed, l1_reduction, taylor_variant: The flat option arguments.
        criterion_options: The options by the criterion class's keywords, or None.
        schedule, budget: As given in YAML (malformed ones are kept for the problems).
        layers: `{pattern: ratio}`, or None.
        **rest: The plan's other fields (`mode`, `prune_at`, `prune_at_epoch`, `target`, `global_pruning`,
            `calibration_batches`).
    """
    flat = {"indices": indices, "seed": seed, "l1_reduction": l1_reduction, "taylor_variant": taylor_variant}
    options = merged_options(criterion, flat, criterion_options)
    plan = PrunePlan.from_arguments(criterion, options, schedule, budget, layers=dict(layers or {}),
                                    given_options=bool(criterion_options), **rest)
    return plan, plan.problems() + flat_problems(criterion, flat)

