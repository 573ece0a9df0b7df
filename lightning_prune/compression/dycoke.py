"""DyCoke as one method of the interface: its settings, installed by its own `DyCokeHooks` (behaviour unchanged).

DyCoke merges tokens before the LLM (temporal token merging, `select_visual`'s place) and selects cache entries at
each decode step (`decode_pruning`'s place); it keeps its own installer because its published variant orders the
merged tokens and its decode candidates in ways the generic hooks need not know about.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lightning_prune.compression.base import CompressionMethod
from lightning_prune.dycoke.hooks import DyCokeHooks, DyCokeSettings

# What TTM keeps with windows of 4 frames: the first frame whole, the other three at 1 - K.
_TTM_KEPT = lambda merging_ratio: (1 + 3 * (1 - merging_ratio)) / 4  # noqa: E731


@dataclass(frozen=True)
class DyCokeMethod(CompressionMethod):
    """DyCoke's settings (`lightning_prune.dycoke.hooks.DyCokeSettings`: the same names, defaults and checks)."""

    name = "dycoke"
    needs_attention = True
    merging_ratio: float = 0.7
    prune_layer: int = 3
    decode_prune_ratio: float = 0.8
    window: int = 4
    reuse_threshold: float | None = 0.9
    variant: str = "official"

    def problems(self) -> list[str]:
        try:
            self.dycoke_settings()
        except ValueError as error:
            return [str(error)]
        return []

    def dycoke_settings(self) -> DyCokeSettings:
        return DyCokeSettings(**self.settings())

    @classmethod
    def at_budget(cls, keep: float) -> DyCokeMethod:
        """The published K = 0.7 merging, and P set so that decode steps attend to `keep` of the visual tokens
        (TTM keeps about `(1 + 3 (1 - K)) / 4` = 47.5 %; `1 - P` of those are attended)."""
        kept = _TTM_KEPT(0.7)
        if keep >= kept:
            return cls(merging_ratio=min(0.7, (4 - 4 * keep) / 3), decode_prune_ratio=0.0)
        return cls(decode_prune_ratio=1 - keep / kept)

    def make_hooks(self, model: nn.Module, family: str | None = None, profile: bool = False) -> DyCokeHooks:
        return DyCokeHooks(model, self.dycoke_settings(), profile=profile, family=family)
