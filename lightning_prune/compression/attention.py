"""Attention capture for the compression methods, registered through transformers' public `AttentionInterface`.

`compression_sdpa` / `compression_eager` wrap transformers' SDPA and the model file's eager attention (the same
wrapped functions as DyCoke's, `lightning_prune.dycoke.attention`). They behave exactly like the wrapped function
unless the attention module carries a tap (`TAP_ATTRIBUTE`, set by `CompressionHooks` on the layers it watches): the
tap then sees the layer's query and key (after RoPE) and the mask, and may swap the keys, values and mask it attends
to (decode-time cache selection). Only the rows a method needs are computed, never the whole attention matrix.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from lightning_prune.dycoke.attention import _model_eager

WRAPPED_IMPLEMENTATIONS = {"sdpa": "compression_sdpa", "eager": "compression_eager"}
TAP_ATTRIBUTE = "_lightning_prune_compression_tap"


def _tapped(inner: Callable[[nn.Module], Callable]) -> Callable:
    def attention(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        tap = getattr(module, TAP_ATTRIBUTE, None)
        if tap is not None:
            key, value, attention_mask = tap(module.layer_idx, query, key, value, attention_mask, kwargs["scaling"])
        return inner(module)(module, query, key, value, attention_mask, **kwargs)

    return attention


def register_attention_functions() -> None:
    """Register `compression_sdpa` and `compression_eager` (idempotent)."""
    AttentionInterface.register(WRAPPED_IMPLEMENTATIONS["sdpa"], _tapped(lambda _: sdpa_attention_forward))
    AttentionInterface.register(WRAPPED_IMPLEMENTATIONS["eager"], _tapped(_model_eager))
    AttentionMaskInterface.register(WRAPPED_IMPLEMENTATIONS["sdpa"], sdpa_mask)
    AttentionMaskInterface.register(WRAPPED_IMPLEMENTATIONS["eager"], eager_mask)
