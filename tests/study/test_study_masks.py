import itertools
import math

import pytest

from lightning_prune.study.prepare import (
    MAX_ENUMERATED_MASKS,
    count_masks,
    enumerate_masks,
    mask_key,
    sample_masks,
)


def test_enumerate_masks_counts_252_for_ten_choose_five():
    masks = enumerate_masks({"conv1": (10, 5)})
    assert len(masks) == 252 == math.comb(10, 5)
    assert len({mask_key(m) for m in masks}) == 252
    assert all(len(m["conv1"]) == 5 and m["conv1"] == sorted(m["conv1"]) for m in masks)
    assert masks[0] == {"conv1": [0, 1, 2, 3, 4]} and masks[-1] == {"conv1": [5, 6, 7, 8, 9]}


def test_enumerate_masks_is_the_product_across_layers():
    sizes = {"conv1": (4, 2), "conv2": (3, 1)}
    masks = enumerate_masks(sizes)
    assert len(masks) == count_masks(sizes) == 6 * 3
    brute = {
        (("conv1", a), ("conv2", b))
        for a in itertools.combinations(range(4), 2)
        for b in itertools.combinations(range(3), 1)
    }
    assert {mask_key(m) for m in masks} == brute


def test_sample_masks_unique_reproducible_and_seeded():
    sizes = {"conv1": (10, 5)}
    first = sample_masks(sizes, 100, seed=3)
    assert first == sample_masks(sizes, 100, seed=3)
    assert first != sample_masks(sizes, 100, seed=4)
    assert len({mask_key(m) for m in first}) == 100
    every = sample_masks(sizes, 252, seed=0)
    assert {mask_key(m) for m in every} == {mask_key(m) for m in enumerate_masks(sizes)}


def test_sample_masks_large_space_draws_by_rejection():
    sizes = {"a": (64, 32), "b": (64, 32)}  # far beyond the enumeration limit
    masks = sample_masks(sizes, 50, seed=1)
    assert masks == sample_masks(sizes, 50, seed=1)
    assert len({mask_key(m) for m in masks}) == 50
    assert all(len(m["a"]) == 32 and len(set(m["b"])) == 32 and max(m["b"]) < 64 for m in masks)


def test_sample_masks_more_than_distinct_raises():
    with pytest.raises(ValueError, match=r"`masks.sample` must be between 1 and the number of distinct masks \(252"):
        sample_masks({"conv1": (10, 5)}, 253, seed=0)


def test_enumerate_masks_too_many_raises():
    sizes = {"a": (64, 32)}
    assert count_masks(sizes) > MAX_ENUMERATED_MASKS
    with pytest.raises(ValueError, match="`masks` enumerates at most .* Set `masks.sample: N`"):
        enumerate_masks(sizes)


def test_masks_invalid_sizes_raise():
    with pytest.raises(ValueError, match=r"`layer_sizes\['conv1'\]` must prune between 0 and channels - 1"):
        enumerate_masks({"conv1": (4, 4)})
    with pytest.raises(ValueError, match="`layer_sizes` must name at least one layer"):
        sample_masks({}, 1, seed=0)
