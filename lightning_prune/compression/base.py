"""The token-compression interface: what a method is, what it may see, what it returns. No Lightning here.

A method is a frozen dataclass (its fields are the published parameter names, its defaults the published evaluation
settings) whose `problems()` lists bad values, plus up to three hooks that `CompressionHooks` calls (see the package
docstring). The hooks receive tensors and small context objects only; the family specifics stay in the adapters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from lightning_prune._checks import int_problems
from lightning_prune.compression.contexts import (
    ONE_SAMPLE_ATTRIBUTE,
    LayerContext,
    LayerCut,
    VisualContext,
    VisualSelection,
    generates_one_sample_at_a_time,
)
from lightning_prune.compression.hooks import CompressionHooks
from lightning_prune.dycoke.families.base import POSITION_RULES, FamilyAdapter, VideoTokens, positions_problems

# The context objects live in `contexts` (the installer imports them without importing this module back); methods
# keep importing the whole interface from here.
__all__ = [
    "ONE_SAMPLE_ATTRIBUTE", "CompressionMethod", "LayerContext", "LayerCut", "VisualContext", "VisualSelection",
    "check_fraction", "int_problems", "generates_one_sample_at_a_time", "kept_of", "POSITION_RULES",
    "positions_problems",
]


@dataclass(frozen=True)
class CompressionMethod:
    """Base of the methods; subclasses are frozen dataclasses of the published parameters.

    Class attributes:
        name: registry name (`fastv`, ...).
        needs_attention: the method reads attention weights (flash attention is refused).
        needs_cls: the method reads a CLS token of the vision tower (refused on towers without one, naming the
            substitute setting).
        one_sample: the method runs one prompt at a time (its published code is batch 1): while it is installed,
            `VideoLLM` generates a batch sample by sample, each unpadded, exactly as batch-1 runs would
            (`generates_one_sample_at_a_time`); a direct `generate` call with a batch is refused by the method.
    """

    name: ClassVar[str] = ""
    needs_attention: ClassVar[bool] = False
    needs_cls: ClassVar[bool] = False
    one_sample: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.validate()

    def problems(self) -> list[str]:
        """One message per out-of-range parameter ("`arg` must be <rule>, got <value>.")."""
        return []

    def validate(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError(" ".join(problems))

    def check_model(self, base: nn.Module, family: FamilyAdapter, num_layers: int) -> None:
        """Raise before any compute when the method cannot run on this model (e.g. a layer beyond its depth)."""

    @classmethod
    def at_budget(cls, keep: float) -> CompressionMethod:
        """The method set to retain the share `keep` in (0, 1] of the visual tokens (the benchmark's budgets)."""
        raise NotImplementedError(f"{cls.__name__} has no budget mapping.")

    @property
    def position_rule(self) -> str:
        """How a prompt shortened before the LLM is numbered: the method's `positions` when it has one (the methods
        that drop tokens before the LLM), else `published` (renumbered)."""
        return getattr(self, "positions", "published")

    def settings(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    def describe(self) -> str:
        """`name(arg=value, ...)`, for logs and efficiency reports."""
        return f"{self.name}(" + ", ".join(f"{key}={value!r}" for key, value in self.settings().items()) + ")"

    # The hooks. A method implements any of them; the defaults do nothing.

    def select_visual(self, video: VideoTokens, context: VisualContext) -> VisualSelection | None:
        """Before the LLM: which video tokens enter it (None: all)."""
        return None

    def vision_probe(self, base: nn.Module, family: FamilyAdapter):
        """An object with `attach() -> handles` (hooks inside the vision tower) whose captures `select_visual` reads
        as `context.probe`; None when the method reads nothing there."""
        return None

    def attention_layers(self, num_layers: int) -> tuple[int, ...]:
        """LLM layers whose last-prompt-token attention row `cut_layer` needs at the prefill (computed alone)."""
        return ()

    def cut_layers(self, num_layers: int) -> tuple[int, ...]:
        """LLM layers before which `cut_layer` is called at the prefill."""
        return ()

    def cut_layer(self, context: LayerContext) -> LayerCut | None:
        """Inside the LLM, at the prefill: the tokens that layer `context.layer` and the later ones keep (None: all)."""
        return None

    def decode_pruning(self):
        """A `lightning_prune.dycoke.DecodePruning` for decode-time cache selection, or None."""
        return None

    def make_hooks(self, model: nn.Module, family: str | None = None, profile: bool = False):
        """The installer of this method on `model` (`install()`, `remove()`, `pop_stats()`, `base`)."""
        return CompressionHooks(model, self, family=family, profile=profile)


# Set on the family's base model while a `one_sample` method is installed on it.
def check_fraction(name: str, value: Any, low_open: bool = True, high_closed: bool = True) -> list[str]:
    """`["`name` must be in (0, 1], got v."]` style problems for a share (bounds as flagged)."""
    low, high = ("(" if low_open else "["), ("]" if high_closed else ")")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value > 0 if low_open else value >= 0) and (value <= 1 if high_closed else value < 1)
    return [] if ok else [f"`{name}` must be in {low}0, 1{high}, got {value!r}."]


def kept_of(count: int, ratio: float) -> int:
    """`int(count * ratio)`, the published codes' count of kept tokens (FastV: `int(576 * ratio)`)."""
    return int(count * ratio)
