"""Self-supervised pretext losses for tiny video LLMs trained from scratch, each read by a training-only linear head.

A pretrained vision tower and LLM bring these abilities with them; a tiny model trained on the answers alone may never
find them, and token compression then breaks what it learned instead (see `VideoLLM`'s `patch_position_loss` and
`frame_change_loss`). The shipped assets hold the model alone, never a head.

- `patch_position_loss`: each frame token's place in its frame, from the token (the LLM's input).
- `frame_change_loss`: whether a frame token's patch of the frame changed since the previous frame, from the token's
  hidden state after an LLM layer: the comparison of a token with the same place one frame earlier that counting
  colour changes (and motion) needs, which a model trained on answers alone replaces by shortcuts (counting the
  distinct colours).
"""

from __future__ import annotations

import torch
from torch import nn


def patch_position_loss(head: nn.Linear, frames: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of `head` predicting each frame token's index in its frame; `frames` `[..., N, D]`."""
    logits = head(frames.to(head.weight.dtype))
    places = torch.arange(frames.shape[-2], device=frames.device).expand(logits.shape[:-1])
    return nn.functional.cross_entropy(logits.flatten(0, -2), places.flatten())


def frame_change_labels(pixels: torch.Tensor, side: int, tolerance: float = 0.05) -> torch.Tensor:
    """`[B, F - 1, side * side]`: True where a frame's patch (the frame cut into `side x side` equal cells, raster
    order, as the frame tokens are) differs from the same patch of the previous frame by more than `tolerance` in any
    pixel and channel. `pixels`: the processor's `[B, F, C, H, W]` frames."""
    difference = (pixels[:, 1:] - pixels[:, :-1]).abs().amax(2)  # [B, F - 1, H, W]
    return nn.functional.adaptive_max_pool2d(difference.float(), side).flatten(2) > tolerance


def frame_token_states(hidden: torch.Tensor, input_ids: torch.Tensor, video_token_id: int, frames: int,
                       per_frame: int) -> torch.Tensor:
    """`[B, frames, per_frame, D]`: the hidden states `[B, S, D]` at each row's first `frames * per_frame` video
    placeholder positions of `input_ids` (the frame tokens; a trailing token such as a newline is left out)."""
    visual = input_ids == video_token_id
    counts = visual.sum(1)
    if bool((counts < frames * per_frame).any()):
        raise ValueError(f"Expected at least {frames} x {per_frame} video tokens in every row, got {counts.tolist()}.")
    rows = [hidden[row, visual[row].nonzero().squeeze(1)[: frames * per_frame]] for row in range(len(hidden))]
    return torch.stack(rows).view(len(hidden), frames, per_frame, -1)


def frame_change_loss(head: nn.Linear, states: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of `head` on the frame tokens' `states` `[B, F, N, D]` (every frame but the first)
    against `labels` `[B, F - 1, N]`."""
    logits = head(states[:, 1:].to(head.weight.dtype)).squeeze(-1)
    return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
