"""Temporal token merging against a brute-force reading of the rule in the issue."""

import math

import pytest
import torch
from published_reference import published_ttm

from lightning_prune.dycoke import (
    kept_count,
    merged_token_count,
    reference_frames,
    temporal_token_merging,
    ttm_keep_indices,
    ttm_keep_positions,
)


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _reference_keep(frames: torch.Tensor, ratio: float) -> list[list[int]]:
    """The issue's rule for windows of 4, in plain Python: 1 and 2 against 0, 3 against 2 (original tokens)."""
    num_frames, num_tokens, _ = frames.shape
    keep = int((1 - ratio) * num_tokens + 1e-9)
    rows = frames.tolist()
    kept = []
    for frame in range(num_frames):
        offset = frame % 4
        if offset == 0:
            kept.append(list(range(num_tokens)))
            continue
        reference = frame - 1 if offset == 3 else frame - offset
        similarity = [_cosine(rows[frame][n], rows[reference][n]) for n in range(num_tokens)]
        least_similar = sorted(range(num_tokens), key=lambda n: similarity[n])[:keep]
        kept.append(sorted(least_similar))
    return kept


@pytest.mark.parametrize(("num_frames", "ratio"), [(8, 0.7), (7, 0.5), (6, 0.3), (5, 0.7), (1, 0.5)])
def test_ttm_keep_indices_equal_the_rule_computed_by_hand(num_frames, ratio):
    frames = torch.randn(num_frames, 12, 5, generator=torch.Generator().manual_seed(num_frames))
    kept = ttm_keep_indices(frames, ratio, variant="refined")
    assert [index.tolist() for index in kept] == _reference_keep(frames, ratio)


def test_ttm_keeps_least_similar_tokens_of_a_frame_that_repeats_its_reference():
    frames = torch.randn(4, 10, 3, generator=torch.Generator().manual_seed(0))
    frames[1] = frames[0]
    frames[1, [2, 7]] = -frames[0, [2, 7]]  # only these two tokens changed (cosine -1)
    kept = ttm_keep_indices(frames, ratio=0.8, variant="refined")  # keep int(0.2 * 10) = 2
    assert kept[1].tolist() == [2, 7]


def test_ttm_ties_drop_earlier_positions_first():
    frames = torch.ones(2, 6, 4)  # every token identical: all similarities tie at 1
    assert ttm_keep_indices(frames, ratio=0.5, variant="refined")[1].tolist() == [0, 1, 2]


@pytest.mark.parametrize("window", [1, 2, 4, 8])
@pytest.mark.parametrize("num_frames", [1, 4, 9, 32])
def test_ttm_counts_follow_the_formula(num_frames, window):
    num_tokens, ratio = 196, 0.7
    frames = torch.randn(num_frames, num_tokens, 8, generator=torch.Generator().manual_seed(1))
    counts = [len(index) for index in ttm_keep_indices(frames, ratio, window, "refined")]
    keep = int((1 - ratio) * num_tokens + 1e-9)
    full_windows, rest = divmod(num_frames, window)
    expected = full_windows * (num_tokens + (window - 1) * keep) + (num_tokens + (rest - 1) * keep if rest else 0)
    assert sum(counts) == expected == merged_token_count(num_frames, num_tokens, ratio, window, "refined")
    if num_frames % window == 0:
        assert sum(counts) / (num_frames * num_tokens) == pytest.approx((1 + (window - 1) * 0.3) / window, abs=0.01)


def test_reference_frames_follow_the_window_of_four():
    assert reference_frames(10).tolist() == [-1, 0, 0, 2, -1, 4, 4, 6, -1, 8]


def test_kept_count_is_the_floor_of_the_kept_share_without_float_noise():
    assert kept_count(10, 0.7, "refined") == 3 and kept_count(10, 0.9, "refined") == 1
    assert kept_count(196, 0.7, "refined") == 58 and kept_count(196, 0.0, "refined") == 196


def test_kept_count_official_truncates_the_float_product_as_published():
    assert kept_count(10, 0.9) == int(10 * (1 - 0.9)) == 0 and kept_count(196, 0.7) == 58
    assert kept_count(3097, 0.8) == int(3097 * (1 - 0.8)) == 619


def test_temporal_token_merging_gathers_the_kept_tokens_in_order():
    frames = torch.randn(4, 6, 3, generator=torch.Generator().manual_seed(2))
    merged, positions = temporal_token_merging(frames, 0.5, variant="refined")
    kept = ttm_keep_indices(frames, 0.5, variant="refined")
    expected = torch.cat([frames[f, index] for f, index in enumerate(kept)])
    assert torch.equal(merged, expected)
    assert torch.equal(positions, ttm_keep_positions(frames, 0.5, variant="refined"))
    assert positions.tolist() == sorted(positions.tolist())


def test_ttm_with_ratio_zero_keeps_everything():
    frames = torch.randn(5, 4, 2)
    merged, positions = temporal_token_merging(frames, 0.0, variant="refined")
    assert torch.equal(merged, frames.reshape(-1, 2)) and positions.tolist() == list(range(20))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ratio": 1.0}, r"`ratio` must be in \[0, 1\), got 1.0"),
        ({"ratio": -0.1}, r"`ratio` must be in \[0, 1\), got -0.1"),
        ({"ratio": 0.5, "window": 0}, r"`window` must be an integer >= 1, got 0"),
        ({"ratio": 0.5, "window": 8}, r"`window` must be 4 with variant='official' .*, got 8"),
        ({"ratio": 0.5, "variant": "paper"}, r"`variant` must be one of \['official', 'refined'\], got 'paper'"),
    ],
)
def test_ttm_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ttm_keep_indices(torch.randn(4, 3, 2), **kwargs)


def test_ttm_rejects_features_that_are_not_frames():
    with pytest.raises(ValueError, match=r"`frames` must have shape \[F, N, D\], got \(12, 2\)"):
        ttm_keep_indices(torch.randn(12, 2), 0.5)


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.7, 0.9])
@pytest.mark.parametrize("num_tokens", [196, 169])
@pytest.mark.parametrize("num_frames", [1, 2, 4, 5, 7, 8, 31, 32])
def test_ttm_official_equals_the_published_code_in_tokens_and_order(num_frames, num_tokens, ratio):
    gen = torch.Generator().manual_seed(num_frames * 1000 + num_tokens)
    frames = torch.randn(num_frames, num_tokens, 6, generator=gen, dtype=torch.float64)
    kept = ttm_keep_indices(frames, ratio)
    expected = published_ttm(frames.reshape(-1, 6), num_tokens, ratio)
    assert [None if index is None else index.tolist() for index in kept] == expected
    total = sum(len(index) for index in expected if index is not None)
    assert merged_token_count(num_frames, num_tokens, ratio) == total
    order = torch.cat([index + f * num_tokens for f, index in enumerate(kept) if index is not None])
    assert torch.equal(ttm_keep_positions(frames, ratio), order)
    assert torch.equal(temporal_token_merging(frames, ratio)[0], frames.reshape(-1, 6)[order])


def test_ttm_official_keeps_3098_of_32_frames_of_196_tokens():
    assert merged_token_count(32, 196, 0.7) == 9 * 196 + 23 * 58 == 3098
    assert merged_token_count(32, 196, 0.7, variant="refined") == 8 * 196 + 24 * 58 == 2960


def test_ttm_official_drops_the_last_frame_of_an_odd_count_and_refined_never_drops():
    frames = torch.randn(7, 10, 3, generator=torch.Generator().manual_seed(3))
    assert ttm_keep_indices(frames, 0.5)[-1] is None
    assert all(index is not None for index in ttm_keep_indices(frames, 0.5, variant="refined"))
