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

# The highest merging ratio `at_budget` uses (K must stay below 1): TTM then keeps about 25.75 % of the tokens.
_MAX_MERGING = 0.99


@dataclass(frozen=True)
class DyCokeMethod(CompressionMethod):
    """DyCoke's settings (`lightning_prune.dycoke.hooks.DyCokeSettings`: the same names, defaults and checks).

    `score_dtype` (`model`, `float32`, or None for the variant's default) and `carry_state_across_samples` (the last
    decode step's attention vector survives from one generation to the next, batch 1: the published runs) and
    `positions` (`published` renumbering of the merged prompt, or `original`) are forwarded exactly as the `DyCoke`
    callback forwards them.
    """

    name = "dycoke"
    needs_attention = True
    merging_ratio: float = 0.7
    prune_layer: int = 3
    decode_prune_ratio: float = 0.8
    window: int = 4
    reuse_threshold: float | None = 0.9
    variant: str = "official"
    score_dtype: str | None = None
    carry_state_across_samples: bool = False
    positions: str = "published"

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
        """Temporal token merging set to keep `keep` of the visual tokens: windows of 4 frames keep the first whole
        and `1 - K` of the other three, so `K = (4 - 4 keep) / 3`, capped at 0.99 (TTM alone cannot go below about
        26 %); the decode-time pruning keeps its published P = 0.8 and L = 3."""
        return cls(merging_ratio=max(0.0, min(_MAX_MERGING, (4 - 4 * keep) / 3)))

    def make_hooks(self, model: nn.Module, family: str | None = None, profile: bool = False) -> DyCokeHooks:
        return DyCokeHooks(model, self.dycoke_settings(), profile=profile, family=family)
