"""Filter masks of a study: enumerate every combination or sample unique ones, reproducibly.

A *layer mask* is the sorted list of pruned filter indices of one layer; a *mask* maps each selected layer name to
its layer mask (``{"conv1": [0, 3, 5, 7, 8]}``). Layer sizes are given as ``{name: (channels, pruned)}``.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Mapping

Mask = dict[str, list[int]]
LayerSizes = Mapping[str, tuple[int, int]]

# Below this many distinct masks, sampling draws from the full enumeration (exact, no rejection loop).
_ENUMERATE_TO_SAMPLE_LIMIT = 200_000
# An enumeration longer than this is refused: it is never what a user meant (use sampling).
MAX_ENUMERATED_MASKS = 1_000_000


def count_masks(layer_sizes: LayerSizes) -> int:
    """Number of distinct masks: the product over layers of C(channels, pruned).

    Args:
        layer_sizes: ``{layer: (channels, pruned)}``.

    Returns:
        The count, exact (a Python int, however large).
    """
    return math.prod(math.comb(channels, pruned) for channels, pruned in layer_sizes.values())


def _validate_sizes(layer_sizes: LayerSizes) -> None:
    if not layer_sizes:
        raise ValueError("`layer_sizes` must name at least one layer, got {}.")
    for name, (channels, pruned) in layer_sizes.items():
        if not 0 <= pruned < channels:
            raise ValueError(
                f"`layer_sizes[{name!r}]` must prune between 0 and channels - 1 filters, got {pruned} of {channels}."
            )


def iter_masks(layer_sizes: LayerSizes) -> Iterator[Mask]:
    """Every mask in a fixed order: ``itertools.combinations`` per layer, their product across layers.

    Args:
        layer_sizes: ``{layer: (channels, pruned)}``; the first layer varies slowest.

    Yields:
        ``{layer: sorted pruned indices}``.
    """
    _validate_sizes(layer_sizes)
    names = list(layer_sizes)
    per_layer = [itertools.combinations(range(channels), pruned) for channels, pruned in layer_sizes.values()]
    for choice in itertools.product(*per_layer):
        yield {name: list(indices) for name, indices in zip(names, choice, strict=True)}


def enumerate_masks(layer_sizes: LayerSizes) -> list[Mask]:
    """All masks (252 for one layer of 10 filters at ratio 0.5).

    Raises:
        ValueError: if there are more than ``MAX_ENUMERATED_MASKS`` of them.
    """
    total = count_masks(layer_sizes)
    if total > MAX_ENUMERATED_MASKS:
        raise ValueError(
            f"`masks` enumerates at most {MAX_ENUMERATED_MASKS:,} masks, got {total:,} for {dict(layer_sizes)}. "
            "Set `masks.sample: N` to draw N of them instead."
        )
    return list(iter_masks(layer_sizes))


def sample_masks(layer_sizes: LayerSizes, num_masks: int, seed: int) -> list[Mask]:
    """``num_masks`` distinct masks drawn uniformly with a seeded ``random.Random``.

    The same arguments always give the same list in the same order.

    Args:
        layer_sizes: ``{layer: (channels, pruned)}``.
        num_masks: how many distinct masks to draw.
        seed: seed of the generator.

    Raises:
        ValueError: if ``num_masks`` is not positive or exceeds the number of distinct masks.
    """
    _validate_sizes(layer_sizes)
    total = count_masks(layer_sizes)
    if not 0 < num_masks <= total:
        raise ValueError(
            f"`masks.sample` must be between 1 and the number of distinct masks ({total:,} for "
            f"{dict(layer_sizes)}), got {num_masks}."
        )
    rng = random.Random(seed)
    if total <= _ENUMERATE_TO_SAMPLE_LIMIT:
        everything = list(iter_masks(layer_sizes))
        return [everything[i] for i in rng.sample(range(total), num_masks)]
    # Too many to list: draw layer by layer and drop repeats (rare when num_masks << total).
    seen: set[tuple] = set()
    masks: list[Mask] = []
    while len(masks) < num_masks:
        mask = {name: sorted(rng.sample(range(channels), pruned)) for name, (channels, pruned) in layer_sizes.items()}
        key = mask_key(mask)
        if key not in seen:
            seen.add(key)
            masks.append(mask)
    return masks


def mask_key(mask: Mapping[str, list[int]]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """A hashable, order-free form of a mask, for de-duplication."""
    return tuple((name, tuple(sorted(indices))) for name, indices in sorted(mask.items()))
