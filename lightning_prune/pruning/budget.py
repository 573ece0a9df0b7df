"""Compute budgets: prune globally over the selected layers until measured MACs or parameters reach a target.

`budget = {"macs": 0.5}` keeps at most half of the network's multiply-accumulates (`{"params": 0.5}` half of its
parameters). Units are taken in one global order, lowest score first (ties: lower index, earlier layer), never more
than a layer's cap (its ratio's count, or all but one unit). The cost of the first `k` units of that order is
measured on a physically pruned copy (Torch-Pruning's counter), and since it never rises with `k`, a bisection finds
the smallest `k` whose cost is within the budget: one unit fewer would exceed it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from lightning_prune.pruning.metrics import count_params_and_macs
from lightning_prune.pruning.structure import PruningStructure

BUDGET_METRICS = ("macs", "params")


def budget_problems(budget: dict[str, float] | None) -> list[str]:
    """What is wrong with a `budget` argument (empty when it is None or valid)."""
    if budget is None:
        return []
    if not isinstance(budget, dict) or len(budget) != 1 or next(iter(budget)) not in BUDGET_METRICS:
        return [f"`budget` must be one of {{'macs': f}} or {{'params': f}} with f in (0, 1), got {budget!r}."]
    value = next(iter(budget.values()))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        return [f"`budget` must be one of {{'macs': f}} or {{'params': f}} with f in (0, 1), got {budget!r}."]
    return []


def global_order(scores: dict[str, torch.Tensor], caps: dict[str, int]) -> list[tuple[str, int]]:
    """`(layer, unit)` pairs in pruning order: lowest score first, at most `caps[layer]` units of each layer."""
    names = list(caps)
    entries = sorted(
        (float(value), rank, index) for rank, name in enumerate(names) for index, value in enumerate(scores[name])
    )
    taken = dict.fromkeys(names, 0)
    order = []
    for _, rank, index in entries:
        name = names[rank]
        if taken[name] < caps[name]:
            taken[name] += 1
            order.append((name, index))
    return order


def _indices(order: list[tuple[str, int]], count: int, layers: list[str]) -> dict[str, list[int]]:
    chosen: dict[str, list[int]] = {name: [] for name in layers}
    for name, index in order[:count]:
        chosen[name].append(index)
    return {name: sorted(idxs) for name, idxs in chosen.items()}


def pruned_cost(network: nn.Module, example: torch.Tensor, indices: dict[str, list[int]], metric: str) -> int:
    """MACs or parameters of a physically pruned copy of `network` (the network itself is untouched)."""
    clone = copy.deepcopy(network)
    PruningStructure(clone, example).prune(indices)
    params, macs = count_params_and_macs(clone, example)
    return macs if metric == "macs" else params


def check_reachable(
    network: nn.Module, example: torch.Tensor, caps: dict[str, int], budget: dict[str, float],
    cost: Callable[[dict[str, list[int]]], int] | None = None,
) -> tuple[int, int]:
    """Raise unless pruning every selected layer to its cap meets `budget`; return `(cost before, target)`.

    Which units go does not change the count, so this needs no scores and runs before training.

    Raises:
        ValueError: Naming the budget, the layers and the lowest share they can reach.
    """
    (metric, share), = budget.items()
    measure = cost or (lambda indices: pruned_cost(network, example, indices, metric))
    before = measure({})
    lowest = measure({name: list(range(cap)) for name, cap in caps.items()})
    if lowest > share * before:
        raise ValueError(
            f"`budget` {{'{metric}': {share}}} must be reachable by the selected layers: pruning {list(caps)} as far "
            f"as allowed leaves {lowest / before:.4f} of the {metric}; allow more (higher ratios, more layers) or "
            f"raise the budget to at least {lowest / before:.4f}."
        )
    return before, share * before


def indices_for_budget(
    network: nn.Module,
    example: torch.Tensor,
    scores: dict[str, torch.Tensor],
    caps: dict[str, int],
    budget: dict[str, float],
    cost: Callable[[dict[str, list[int]]], int] | None = None,
) -> tuple[dict[str, list[int]], dict[str, float]]:
    """The fewest lowest-scored units whose removal brings the measured cost within `budget`.

    Args:
        network: The network to prune (measured on copies).
        example: An input batch `[B, ...]` the network accepts.
        scores: `{layer: [units] scores}`, higher = keep.
        caps: `{layer: most units that may be pruned}`, in module order.
        budget: `{"macs": f}` or `{"params": f}`: the cost to reach, as a share of the unpruned network's.
        cost: `cost(indices) -> int` (default: `pruned_cost` of `network` on `example` for the budget's metric).

    Returns:
        `({layer: sorted pruned indices}, report)` where the report holds `budget/<metric>_target` (the share),
        `budget/<metric>_before|after` (counts) and `budget/<metric>_reached` (after / before).

    Raises:
        ValueError: If pruning every selected layer as far as its cap allows still exceeds the budget.
    """
    (metric, share), = budget.items()
    layers = list(caps)
    measure = cost or (lambda indices: pruned_cost(network, example, indices, metric))
    before, target = check_reachable(network, example, caps, budget, measure)
    order = global_order(scores, caps)
    low, high = 0, len(order)  # cost(low) > target (or low = 0), cost(high) <= target
    while low < high:
        middle = (low + high) // 2
        if measure(_indices(order, middle, layers)) <= target:
            high = middle
        else:
            low = middle + 1
    indices = _indices(order, high, layers)
    after = measure(indices)
    report = {f"budget/{metric}_target": float(share), f"budget/{metric}_before": float(before),
              f"budget/{metric}_after": float(after), f"budget/{metric}_reached": after / before}
    return indices, report
