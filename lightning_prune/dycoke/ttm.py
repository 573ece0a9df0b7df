"""Temporal token merging (TTM): drop visual tokens that repeat the previous frames, before the LLM.

Frames are taken in windows of `window` (DyCoke: 4). In each window the first frame is kept whole; every other frame
keeps the `int((1 - ratio) * N)` tokens *least* cosine-similar to the token at the same spatial position in its
reference frame (its original, un-merged tokens):

- even offsets (2, 4, ...) against the window's first frame,
- odd offsets (1, 3, ...) against the frame just before.

With the default window of 4 this is the paper's rule: frame 1 and frame 2 against frame 0, frame 3 against frame 2.
A last, incomplete window (F not a multiple of `window`) follows the same rule for the frames it has: its first frame
is kept whole. Kept tokens stay in their spatial order; ties in similarity are broken by spatial order (the earlier
position is dropped first).

Kept fraction for full windows: `(1 + (window - 1) * (1 - ratio)) / window`, i.e. `(1 + 3(1 - K)) / 4` for windows of 4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_ratio_and_window(ratio: float, window: int) -> None:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"`ratio` must be in [0, 1), got {ratio}.")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"`window` must be an integer >= 1, got {window!r}.")


def kept_count(num_tokens: int, ratio: float) -> int:
    """How many of `num_tokens` survive pruning a `ratio` of them: `int((1 - ratio) * num_tokens)`.

    TTM uses it per merged frame (N tokens, ratio K); the decode step per visual span (n_visual, ratio P).

    Args:
        num_tokens: tokens before pruning.
        ratio: fraction pruned, in [0, 1).
    """
    _check_ratio_and_window(ratio, 1)
    # round() first so that e.g. (1 - 0.7) * 10 = 2.9999999999999996 counts as 3, as the formula means
    return int(round((1.0 - ratio) * num_tokens, 9))


def reference_frames(num_frames: int, window: int = 4) -> torch.Tensor:
    """Index of the frame each frame is compared against, or -1 for the window anchors kept whole.

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


def ttm_keep_indices(frames: torch.Tensor, ratio: float, window: int = 4) -> list[torch.Tensor]:
    """Which tokens of each frame temporal token merging keeps.

    Args:
        frames: `[F, N, D]` visual tokens of one video, N tokens per frame in spatial (raster) order.
        ratio: K, the merging ratio in [0, 1); 0 keeps everything.
        window: frames per window (DyCoke: 4).

    Returns:
        F sorted LongTensors: `[N]` (all tokens) for window anchors, `[int((1 - K) N)]` for the other frames.
    """
    _check_ratio_and_window(ratio, window)
    if frames.dim() != 3:
        raise ValueError(f"`frames` must have shape [F, N, D], got {tuple(frames.shape)}.")
    num_frames, num_tokens, _ = frames.shape
    keep = kept_count(num_tokens, ratio)
    reference = reference_frames(num_frames, window)
    everything = torch.arange(num_tokens, device=frames.device)
    kept = [everything] * num_frames
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


def ttm_keep_positions(frames: torch.Tensor, ratio: float, window: int = 4) -> torch.Tensor:
    """Flat positions (into the `F * N` token sequence) that temporal token merging keeps.

    Args:
        frames: `[F, N, D]` visual tokens of one video.
        ratio: K in [0, 1).
        window: frames per window.

    Returns:
        Sorted LongTensor `[M]` with `M = sum(len(i) for i in ttm_keep_indices(frames, ratio, window))`.
    """
    num_tokens = frames.shape[1]
    kept = ttm_keep_indices(frames, ratio, window)
    return torch.cat([index + frame * num_tokens for frame, index in enumerate(kept)])


def temporal_token_merging(
    frames: torch.Tensor, ratio: float, window: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply temporal token merging to the visual tokens of one video.

    Args:
        frames: `[F, N, D]` visual tokens (after pooling: LLaVA-OneVision has N = 196).
        ratio: K in [0, 1).
        window: frames per window.

    Returns:
        `(merged, positions)`: merged tokens `[M, D]` in frame-then-spatial order, and their flat positions `[M]`
        in the `F * N` sequence (see `ttm_keep_positions`).
    """
    positions = ttm_keep_positions(frames, ratio, window)
    return frames.reshape(-1, frames.shape[-1])[positions], positions


def merged_token_count(num_frames: int, num_tokens: int, ratio: float, window: int = 4) -> int:
    """Tokens left after temporal token merging, from the rule alone (no features needed).

    Args:
        num_frames: F.
        num_tokens: N per frame.
        ratio: K in [0, 1).
        window: frames per window.
    """
    anchors = int((reference_frames(num_frames, window) < 0).sum())
    return anchors * num_tokens + (num_frames - anchors) * kept_count(num_tokens, ratio)
