"""DyCoke's attention functions, registered through transformers' public `AttentionInterface`.

`dycoke_sdpa` and `dycoke_eager` wrap transformers' own SDPA and the model file's eager attention. They behave exactly
like the wrapped function unless the forward carries a `dycoke` keyword (a `DecodePruning`, injected by
`lightning_prune.dycoke.hooks`) during a one-token decode step: then layer `L - 1` also scores the visual tokens, and
layers `>= L` attend to the selected cache positions only. Each name also gets the wrapped implementation's mask
function (`AttentionMaskInterface`), so masks are built as for plain SDPA / eager. Verified with transformers 5.24.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from lightning_prune.dycoke.kv_pruning import DecodePruning

#: Attention implementations DyCoke can wrap, and the registered name of each wrapper.
WRAPPED_IMPLEMENTATIONS = {"sdpa": "dycoke_sdpa", "eager": "dycoke_eager"}
STATE_KWARG = "dycoke"


def _reference_eager(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention, for attention modules whose model file has no `eager_attention_forward`."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = weights.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _model_eager(module: nn.Module) -> Callable:
    # transformers' model files each define their own `eager_attention_forward`; use the module's to match it exactly.
    return getattr(inspect.getmodule(type(module)), "eager_attention_forward", _reference_eager)


def _dycoke_attention(inner: Callable[[nn.Module], Callable]) -> Callable:
    def attention(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        pruning: DecodePruning | None = kwargs.pop(STATE_KWARG, None)
        if pruning is not None and pruning.active and query.shape[2] == 1:
            layer = module.layer_idx
            if layer == pruning.prune_layer - 1:
                pruning.observe(query, key, attention_mask, kwargs["scaling"])
            elif layer >= pruning.prune_layer:
                key, value, attention_mask = pruning.prune(layer, key, value, attention_mask)
        return inner(module)(module, query, key, value, attention_mask, **kwargs)

    return attention


def register_attention_functions() -> None:
    """Register `dycoke_sdpa` and `dycoke_eager` (idempotent)."""
    # Looked up at call time, so the function can be replaced (tests spy on it) after registration.
    AttentionInterface.register(WRAPPED_IMPLEMENTATIONS["sdpa"], _dycoke_attention(lambda _: sdpa_attention_forward))
    AttentionInterface.register(WRAPPED_IMPLEMENTATIONS["eager"], _dycoke_attention(_model_eager))
    AttentionMaskInterface.register(WRAPPED_IMPLEMENTATIONS["sdpa"], sdpa_mask)
    AttentionMaskInterface.register(WRAPPED_IMPLEMENTATIONS["eager"], eager_mask)
