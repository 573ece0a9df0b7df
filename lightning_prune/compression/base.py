"""The token-compression interface: what a method is, what it may see, what it returns. No Lightning here.

A method is a frozen dataclass (its fields are the published parameter names, its defaults the published evaluation
settings) whose `problems()` lists bad values, plus up to three hooks that `CompressionHooks` calls (see the package
docstring). The hooks receive tensors and small context objects only; the family specifics stay in the adapters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from lightning_prune.dycoke.families.base import FamilyAdapter, VideoTokens


@dataclass
class VisualContext:
    """What `select_visual` may read besides the video tokens (one batch, at the prefill, before the LLM).

    Attributes:
        base: the family's base model (e.g. `Qwen2_5_VLModel`); methods that need the vision tower's internals
            (VisionZip) call the family adapter's public helpers with it, never its attributes.
        family: the family adapter.
        kwargs: the base model's forward keyword arguments (pixels, grids) as they came.
        generator: a seeded `torch.Generator` for methods that draw at random (one per generation, reproducible).
        probe: the method's `vision_probe` (what it captured inside the vision tower), or None.
    """

    base: nn.Module
    family: FamilyAdapter
    kwargs: dict
    generator: torch.Generator
    probe: Any = None


@dataclass
class VisualSelection:
    """`select_visual`'s answer: what of each sample's video run goes into the LLM.

    Attributes:
        kept: per sample `[M]` indices into the video run (frames then trailing tokens; the same M for every sample),
            in the order the tokens take in the prompt (position ids follow each token's origin).
        features: None to keep the selected tokens' own features, or per sample `[M', D]` replacements of the first
            M' <= M kept tokens' features (merged tokens: e.g. a VisionZip contextual token is its target plus the
            mean of the tokens assigned to it); the others (e.g. a trailing newline) keep their own.
    """

    kept: list[torch.Tensor]
    features: list[torch.Tensor] | None = None


@dataclass
class LayerContext:
    """What `cut_layer` sees before one LLM decoder layer runs at the prefill.

    Attributes:
        layer: the decoder layer's index; `module`: the decoder layer itself (for methods that recompute a query or
            key projection, as PruneVid does).
        hidden_states: `[B, S, D]` the layer's input.
        attention: `[B, S]` head-mean attention of the last prompt token in layer `layer - 1` (softmax over all
            keys, the query after RoPE), when the method listed `layer - 1` in `attention_layers`; else None.
        visual_mask: `[B, S]` True at video tokens.
        visual_index: `[B, S]` each token's index in its sample's original video run (-1 for text).
        positions: `[B, S]` each token's position in the prompt as the LLM received it (after `select_visual`).
        tokens_per_frame / num_frames: the video's layout (per frame N tokens in raster order, F frames).
    """

    layer: int
    module: nn.Module
    hidden_states: torch.Tensor
    attention: torch.Tensor | None
    visual_mask: torch.Tensor
    visual_index: torch.Tensor
    positions: torch.Tensor
    tokens_per_frame: int
    num_frames: int


@dataclass
class LayerCut:
    """`cut_layer`'s answer: the tokens this layer and every later one keep.

    Attributes:
        keep: `[B, S']` sorted indices into the current sequence (text included: it is never dropped silently).
        hidden_states: None, or `[B, S, D]` replacement hidden states taken before `keep` is applied (merging methods
            write a merged token's state into the token that stays).
        earlier_cache: also cut the cache of the layers before this one to the same tokens (PruneVid's stage 2),
            so that decoding attends to the kept tokens everywhere (those entries are masked out, not freed).
    """

    keep: torch.Tensor
    hidden_states: torch.Tensor | None = None
    earlier_cache: bool = False


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
        from lightning_prune.compression.hooks import CompressionHooks

        return CompressionHooks(model, self, family=family, profile=profile)


# Set on the family's base model while a `one_sample` method is installed on it.
ONE_SAMPLE_ATTRIBUTE = "_lightning_prune_one_sample"


def generates_one_sample_at_a_time(model: nn.Module) -> bool:
    """True while a method that runs one prompt at a time (`CompressionMethod.one_sample`) is installed in `model`:
    its caller must then split a batch into single, unpadded samples and generate them one after the other."""
    return any(getattr(module, ONE_SAMPLE_ATTRIBUTE, False) for module in model.modules())


def check_fraction(name: str, value: Any, low_open: bool = True, high_closed: bool = True) -> list[str]:
    """`["`name` must be in (0, 1], got v."]` style problems for a share (bounds as flagged)."""
    low, high = ("(" if low_open else "["), ("]" if high_closed else ")")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value > 0 if low_open else value >= 0) and (value <= 1 if high_closed else value < 1)
    return [] if ok else [f"`{name}` must be in {low}0, 1{high}, got {value!r}."]


def check_int(name: str, value: Any, minimum: int) -> list[str]:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        return [f"`{name}` must be an integer >= {minimum}, got {value!r}."]
    return []


def kept_of(count: int, ratio: float) -> int:
    """`int(count * ratio)`, the published codes' count of kept tokens (FastV: `int(576 * ratio)`)."""
    return int(count * ratio)
