"""Floors: visual tokens kept without looking at them, at the same budget as the methods they are compared with.

- `random`: `int(F * N * keep_ratio)` frame tokens drawn uniformly without replacement per sample (seeded).
- `uniform_spatial`: in every frame the same `int(N * keep_ratio)` tokens, evenly spaced in raster order
  (index `floor(i * N / n)`).
- `uniform_temporal`: every token of `max(1, int(F * keep_ratio))` evenly spaced frames (frame `floor(j * F / m)`).

Video tokens after the frames (LLaVA-OneVision's newline) are always kept; kept tokens stay in their original order.
Each takes `positions` (`published`: the shorter prompt is renumbered, as a method that drops tokens before the LLM
does; `original`: kept tokens keep their whole-prompt positions).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_prune.compression.base import (
    CompressionMethod,
    VisualContext,
    VisualSelection,
    check_fraction,
    int_problems,
    positions_problems,
)
from lightning_prune.dycoke.families.base import VideoTokens


def evenly_spaced(total: int, count: int) -> torch.Tensor:
    """`count` indices in [0, total) spread evenly: `floor(i * total / count)`, i = 0 .. count - 1."""
    return torch.arange(count) * total // count


def _with_trailing(frame_index: torch.Tensor, video: VideoTokens) -> torch.Tensor:
    frames = video.num_frames * video.tokens_per_frame
    return torch.cat([frame_index, torch.arange(frames, frames + video.trailing)])


@dataclass(frozen=True)
class RandomTokensMethod(CompressionMethod):
    """Random frame tokens. `keep_ratio` in (0, 1]; `seed` fixes the draw (the same at every generation)."""

    name = "random"
    keep_ratio: float = 0.25
    seed: int = 0
    positions: str = "published"

    def problems(self) -> list[str]:
        return (check_fraction("keep_ratio", self.keep_ratio) + int_problems("seed", self.seed, 0)
                + positions_problems(self.positions))

    @classmethod
    def at_budget(cls, keep: float) -> RandomTokensMethod:
        return cls(keep_ratio=keep)

    def select_visual(self, video: VideoTokens, context: VisualContext) -> VisualSelection:
        total = video.num_frames * video.tokens_per_frame
        count = max(1, int(total * self.keep_ratio))
        kept = [_with_trailing(torch.randperm(total, generator=context.generator)[:count].sort().values, video)
                for _ in video.frames]
        return VisualSelection(kept)


@dataclass(frozen=True)
class UniformSpatialMethod(CompressionMethod):
    """The same evenly spaced tokens of every frame. `keep_ratio` in (0, 1]."""

    name = "uniform_spatial"
    keep_ratio: float = 0.25
    positions: str = "published"

    def problems(self) -> list[str]:
        return check_fraction("keep_ratio", self.keep_ratio) + positions_problems(self.positions)

    @classmethod
    def at_budget(cls, keep: float) -> UniformSpatialMethod:
        return cls(keep_ratio=keep)

    def select_visual(self, video: VideoTokens, context: VisualContext) -> VisualSelection:
        per_frame = video.tokens_per_frame
        within = evenly_spaced(per_frame, max(1, int(per_frame * self.keep_ratio)))
        index = (torch.arange(video.num_frames)[:, None] * per_frame + within).flatten()
        return VisualSelection([_with_trailing(index, video)] * len(video.frames))


@dataclass(frozen=True)
class UniformTemporalMethod(CompressionMethod):
    """Every token of evenly spaced frames. `keep_ratio` in (0, 1]."""

    name = "uniform_temporal"
    keep_ratio: float = 0.25
    positions: str = "published"

    def problems(self) -> list[str]:
        return check_fraction("keep_ratio", self.keep_ratio) + positions_problems(self.positions)

    @classmethod
    def at_budget(cls, keep: float) -> UniformTemporalMethod:
        return cls(keep_ratio=keep)

    def select_visual(self, video: VideoTokens, context: VisualContext) -> VisualSelection:
        per_frame = video.tokens_per_frame
        frames = evenly_spaced(video.num_frames, max(1, int(video.num_frames * self.keep_ratio)))
        index = (frames[:, None] * per_frame + torch.arange(per_frame)).flatten()
        return VisualSelection([_with_trailing(index, video)] * len(video.frames))
