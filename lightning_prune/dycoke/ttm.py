"""Temporal token merging (TTM): drop visual tokens that repeat the previous frames, before the LLM.

Two variants of the rule (`variant`):

`official` (default) is the published DyCoke code (KD-TAO/DyCoke, `dycole_ttm`), kept token for kept token and in its
order. With `keep = int((1 - K) * N)`:

1. frames are paired (0, 1), (2, 3), ...: the first of a pair stays whole, the second keeps the `keep` tokens least
   cosine-similar to the first at the same spatial position (cosine of L2-normalised tokens);
2. for `i in range(0, F - 4, 4)` frame `i + 2` is re-merged against frame `i` (original tokens) and keeps `keep`.

Kept tokens of a merged frame enter the sequence in ascending-similarity order (`torch.topk(largest=False)`), not in
spatial order. Consequences of the published loops: when F % 4 == 0 the last window's frame F - 2 stays whole
(32 frames x 196 tokens, K = 0.7: 3,098 tokens), and an odd F drops its last frame (`None`). Two edge cases the
published code does not run: F <= 4 (it stacks an empty list and raises) is merged by the loops that do run, and
F = 1 (no pair: the published code would leave no visual token) keeps its one frame whole. The window is fixed at 4.

`refined` is our variant: in each window of `window` frames the first frame is kept whole; every other frame keeps the
`int((1 - ratio) * N)` tokens least similar to its reference frame (original tokens): even offsets against the
window's first frame, odd offsets against the frame just before. For windows of 4 this is the same pairing as the
paper's, but every window is merged (also the last one, and a last incomplete one, whose first frame stays whole), no
frame is dropped, kept tokens stay in spatial order (so RoPE positions follow the frame's raster order), and ties are
broken by spatial order. Kept fraction for full windows: `(1 + (window - 1) * (1 - ratio)) / window`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_prune._checks import check_int
from lightning_prune.dycoke.variant import VARIANTS, Variant  # noqa: F401  (VARIANTS: re-exported)


def _check_ratio_and_window(ratio: float, window: int) -> None:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"`ratio` must be in [0, 1), got {ratio}.")
    check_int("window", window, 1)


def kept_count(num_tokens: int, ratio: float, variant: str = "official") -> int:
    """How many of `num_tokens` survive pruning a `ratio` of them.

    TTM uses it per merged frame (N tokens, ratio K); the decode step per candidate span (ratio P).

    Args:
        num_tokens: tokens before pruning.
        ratio: fraction pruned, in [0, 1).
        variant: `official`: `int(num_tokens * (1 - ratio))` in floating point, as the published code computes it
            (so `10 * (1 - 0.9)` = 0.99999... gives 0); `refined`: the same without the float noise (gives 1).
    """
    _check_ratio_and_window(ratio, 1)
    return Variant.of(variant).kept_count(num_tokens, ratio)


def reference_frames(num_frames: int, window: int = 4) -> torch.Tensor:
    """The `refined` rule: index of the frame each frame is compared against, or -1 for window anchors kept whole.

    Args:
        num_frames: F.
        window: frames per window.

    Returns:
        LongTensor `[F]`, e.g. `[-1, 0, 0, 2, -1, 4, 4, 6]` for F = 8, window = 4.
    """
    _check_ratio_and_window(0.0, window)
    frame = torch.arange(num_frames)
    offset = frame % window
    start = frame - offset
    reference = torch.where(offset % 2 == 1, frame - 1, start)
    return torch.where(offset == 0, torch.full_like(frame, -1), reference)


def _official_merges(num_frames: int) -> list[tuple[int, int]]:
    """`(target, reference)` frame pairs of the published code, in the order it applies them (later ones win)."""
    pairs = [(i + 1, i) for i in range(0, num_frames - 1, 2)]
    return pairs + [(i + 2, i) for i in range(0, num_frames - 4, 4)]


def _official_keep_indices(frames: torch.Tensor, ratio: float) -> list[torch.Tensor | None]:
    num_frames, num_tokens, _ = frames.shape
    everything = torch.arange(num_tokens, device=frames.device)
    if num_frames == 1:
        return [everything]
    kept: list[torch.Tensor | None] = [everything] * (num_frames - num_frames % 2) + [None] * (num_frames % 2)
    keep = kept_count(num_tokens, ratio, "official")
    merges = dict(_official_merges(num_frames))  # stage 2 overwrites stage 1 for frames i + 2
    targets = torch.tensor(list(merges), device=frames.device)
    references = torch.tensor(list(merges.values()), device=frames.device)
    # Stage 1 normalises before the cosine, stage 2 does not: the same number up to rounding, done as published.
    normalized = F.normalize(frames, p=2, dim=-1)
    first_stage = (targets % 2 == 1)[:, None]
    similarity = torch.where(
        first_stage,
        F.cosine_similarity(normalized[targets], normalized[references], dim=-1),
        F.cosine_similarity(frames[targets], frames[references], dim=-1),
    )  # [T, N]
    least_similar = similarity.topk(keep, dim=-1, largest=False).indices  # ascending similarity, as published
    for row, frame in enumerate(merges):
        kept[frame] = least_similar[row]
    return kept


def ttm_keep_indices(
    frames: torch.Tensor, ratio: float, window: int = 4, variant: str = "official"
) -> list[torch.Tensor | None]:
    """Which tokens of each frame temporal token merging keeps, in the order they enter the merged sequence.

    Args:
        frames: `[F, N, D]` visual tokens of one video, N tokens per frame in spatial (raster) order.
        ratio: K, the merging ratio in [0, 1).
        window: frames per window (DyCoke: 4; `official` accepts only 4).
        variant: `official` (the published code) or `refined` (see the module's docstring).

    Returns:
        One entry per frame: a LongTensor of kept token indices in merged-sequence order (`official`: ascending
        similarity for merged frames; `refined`: sorted), or `None` for a frame `official` drops (the last of an odd
        F). `refined` never returns `None`.
    """
    _check_ratio_and_window(ratio, window)
    variant = Variant.of(variant)
    if frames.dim() != 3:
        raise ValueError(f"`frames` must have shape [F, N, D], got {tuple(frames.shape)}.")
    problem = variant.window_problem(window)
    if problem is not None:
        raise ValueError(problem)
    if variant.published:
        return _official_keep_indices(frames, ratio)
    num_frames, num_tokens, _ = frames.shape
    keep = variant.kept_count(num_tokens, ratio)
    reference = reference_frames(num_frames, window)
    everything = torch.arange(num_tokens, device=frames.device)
    kept: list[torch.Tensor | None] = [everything] * num_frames
    targets = (reference >= 0).nonzero().flatten()
    if len(targets) == 0:
        return kept
    if keep == num_tokens:
        return [everything.clone() for _ in range(num_frames)]
    # One batched similarity for all merged frames: [T, N]
    similarity = F.cosine_similarity(
        frames[targets.to(frames.device)].float(), frames[reference[targets].to(frames.device)].float(), dim=-1
    )
    # A stable ascending sort gives the least similar first, ties by spatial order.
    least_similar = torch.sort(similarity, dim=-1, stable=True).indices[:, :keep]
    least_similar = torch.sort(least_similar, dim=-1).values
    for row, frame in enumerate(targets.tolist()):
        kept[frame] = least_similar[row]
    return kept


def ttm_keep_positions(frames: torch.Tensor, ratio: float, window: int = 4, variant: str = "official") -> torch.Tensor:
    """Flat positions (into the `F * N` token sequence) that temporal token merging keeps, in merged order.

    Args:
        frames: `[F, N, D]` visual tokens of one video.
        ratio: K in [0, 1).
        window: frames per window.
        variant: `official` or `refined`.

    Returns:
        LongTensor `[M]` (sorted for `refined`; in the published sequence order for `official`).
    """
    num_tokens = frames.shape[1]
    kept = ttm_keep_indices(frames, ratio, window, variant)
    return torch.cat([index + frame * num_tokens for frame, index in enumerate(kept) if index is not None])


def temporal_token_merging(
    frames: torch.Tensor, ratio: float, window: int = 4, variant: str = "official"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply temporal token merging to the visual tokens of one video.

    Args:
        frames: `[F, N, D]` visual tokens (after pooling: LLaVA-OneVision has N = 196).
        ratio: K in [0, 1).
        window: frames per window.
        variant: `official` or `refined`.

    Returns:
        `(merged, positions)`: merged tokens `[M, D]` in merged-sequence order, and their flat positions `[M]`
        in the `F * N` sequence (see `ttm_keep_positions`).
    """
    positions = ttm_keep_positions(frames, ratio, window, variant)
    return frames.reshape(-1, frames.shape[-1])[positions], positions


def merged_token_count(
    num_frames: int, num_tokens: int, ratio: float, window: int = 4, variant: str = "official"
) -> int:
    """Tokens left after temporal token merging, from the rule alone (no features needed).

    Args:
        num_frames: F.
        num_tokens: N per frame.
        ratio: K in [0, 1).
        window: frames per window.
        variant: `official` or `refined`.
    """
    variant = Variant.of(variant)
    keep = kept_count(num_tokens, ratio, variant)
    if variant.published:
        if num_frames == 1:
            return num_tokens
        merged = len(dict(_official_merges(num_frames)))
        return (num_frames - num_frames % 2 - merged) * num_tokens + merged * keep
    anchors = int((reference_frames(num_frames, window) < 0).sum())
    return anchors * num_tokens + (num_frames - anchors) * keep
