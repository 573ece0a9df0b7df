"""The choice of the units to prune from their scores: the lowest, per layer or ranked over all layers.

A leaf: structures (`PruningStructure.choose_units`, a transformer decoder's per-KV-group rule) call it, criteria
only score.
"""

from __future__ import annotations

import torch


def lowest_units(
    scores: dict[str, torch.Tensor], counts: dict[str, int], global_ranking: bool = False
) -> dict[str, list[int]]:
    """The units to prune: per layer the `counts[layer]` lowest scores, or globally the `sum(counts)` lowest.

    Ties go to the lower index (and, globally, to the earlier layer). Global ranking compares raw scores across
    layers and never takes every unit of a layer: a layer's last unit is skipped for the next-lowest elsewhere.

    Args:
        scores: `{layer: [units] scores}`, higher = keep.
        counts: `{layer: units to prune}`.
        global_ranking: Rank all selected layers' units together.

    Returns:
        `{layer: sorted pruned indices}` for every layer of `counts`.
    """
    if not global_ranking:
        return {
            name: sorted(torch.sort(scores[name], stable=True).indices[:count].tolist())
            for name, count in counts.items()
        }
    entries = [
        (float(value), layer_rank, index)
        for layer_rank, name in enumerate(counts)
        for index, value in enumerate(scores[name].tolist())
    ]
    entries.sort()
    names = list(counts)
    chosen: dict[str, list[int]] = {name: [] for name in names}
    budget = sum(counts.values())
    for _, layer_rank, index in entries:
        if budget == 0:
            break
        name = names[layer_rank]
        if len(chosen[name]) < len(scores[name]) - 1:
            chosen[name].append(index)
            budget -= 1
    return {name: sorted(idxs) for name, idxs in chosen.items()}
