"""What a token-compression method may see and return: the small context objects `CompressionHooks` passes to a
method's hooks, and the cut a method asks for. No Lightning here; `base` (the method) and `hooks` (the installer) both
import them, so neither imports the other's module back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_prune.dycoke.families.base import FamilyAdapter


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


ONE_SAMPLE_ATTRIBUTE = "_lightning_prune_one_sample"


def generates_one_sample_at_a_time(model: nn.Module) -> bool:
    """True while a method that runs one prompt at a time (`CompressionMethod.one_sample`) is installed in `model`:
    its caller must then split a batch into single, unpadded samples and generate them one after the other."""
    return any(getattr(module, ONE_SAMPLE_ATTRIBUTE, False) for module in model.modules())
