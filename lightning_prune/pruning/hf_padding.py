"""A per-layer-size pruned decoder as a uniform-size model with the same logits, for tools that `from_pretrained`.

Block-wise pruning (LLM-Pruner's layer ranges) or global ranking leaves layers of different sizes, which a
transformers config cannot express (`hf_export`). For evaluation tools that only load folders (`lm_eval --model
hf`), `zero_padded_copy` widens every gated MLP and attention back to the largest layer's size with zero weights:

- an MLP channel with zero gate/up rows and a zero down column adds `silu(0) * 0 = 0`;
- a query head with zero q rows and zero o_proj columns adds nothing (its attention output is multiplied by zero);
  the padded heads go at the end of each KV group, so `repeat_kv` still pairs every kept head with its KV head;
- a padded KV head (zero k/v rows) serves only padded query heads.

The logits are therefore those of the pruned model (a test checks), but the folder holds as many parameters as
the widest layer: the saving is in the Lightning checkpoint, which replays the pruning.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lightning_prune.pruning.transformer import head_counts, is_decoder_attention, is_gated_mlp


def _widened(linear: nn.Linear, rows: list[int] | None, columns: list[int] | None, out_size: int, in_size: int
             ) -> nn.Linear:
    """A zero linear of `[out_size, in_size]` holding `linear`'s rows at `rows` and columns at `columns`."""
    weight = linear.weight.detach()
    wide = nn.Linear(in_size, out_size, bias=linear.bias is not None).to(weight.device, weight.dtype)
    row_index = torch.as_tensor(rows if rows is not None else range(out_size), device=weight.device)
    col_index = torch.as_tensor(columns if columns is not None else range(in_size), device=weight.device)
    with torch.no_grad():
        wide.weight.zero_()
        wide.weight[row_index[:, None], col_index[None, :]] = weight
        if linear.bias is not None:
            wide.bias.zero_()
            wide.bias[row_index] = linear.bias.detach()
    return wide.train(linear.training)


def _pad_mlp(mlp: nn.Module, size: int) -> None:
    kept = list(range(mlp.gate_proj.out_features))
    hidden = mlp.gate_proj.in_features
    mlp.gate_proj = _widened(mlp.gate_proj, kept, None, size, hidden)
    mlp.up_proj = _widened(mlp.up_proj, kept, None, size, hidden)
    mlp.down_proj = _widened(mlp.down_proj, None, kept, mlp.down_proj.out_features, size)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = size


def _pad_attention(attention: nn.Module, heads: int, kv_heads: int) -> None:
    own_heads, own_kv = head_counts(attention)
    d, group, own_group = attention.head_dim, heads // kv_heads, own_heads // own_kv
    # own head h (KV group h // own_group) goes to slot (h // own_group) * group + h % own_group
    head_slots = [(h // own_group) * group + h % own_group for h in range(own_heads)]
    q_rows = [slot * d + j for slot in head_slots for j in range(d)]
    kv_rows = [g * d + j for g in range(own_kv) for j in range(d)]
    hidden = attention.q_proj.in_features
    attention.q_proj = _widened(attention.q_proj, q_rows, None, heads * d, hidden)
    attention.k_proj = _widened(attention.k_proj, kv_rows, None, kv_heads * d, hidden)
    attention.v_proj = _widened(attention.v_proj, kv_rows, None, kv_heads * d, hidden)
    attention.o_proj = _widened(attention.o_proj, None, q_rows, attention.o_proj.out_features, heads * d)
    attention.num_key_value_groups = group
    for attribute, value in (("num_heads", heads), ("num_key_value_heads", kv_heads)):
        if hasattr(attention, attribute):
            setattr(attention, attribute, value)


def zero_padded_copy(network: nn.Module) -> nn.Module:
    """A deep copy of `network` whose decoder layers all have the largest layer's sizes (zero-padded, same logits):
    the most KV heads of any layer, and the most query heads per KV group of any layer.

    Raises:
        ValueError: If head dimensions differ between layers.
    """
    clone = copy.deepcopy(network)
    mlps = [m for m in clone.modules() if is_gated_mlp(m)]
    attentions = [m for m in clone.modules() if is_decoder_attention(m)]
    if mlps:
        size = max(m.gate_proj.out_features for m in mlps)
        for mlp in mlps:
            if mlp.gate_proj.out_features < size:
                _pad_mlp(mlp, size)
    if attentions:
        counts = [head_counts(a) for a in attentions]
        kv_heads = max(kv for _, kv in counts)
        group = max(h // kv for h, kv in counts)
        if len({a.head_dim for a in attentions}) > 1:
            raise ValueError("zero padding needs one head_dim in every layer, got "
                             f"{sorted({a.head_dim for a in attentions})}.")
        for attention, (heads, kv) in zip(attentions, counts, strict=True):
            if (heads, kv) != (kv_heads * group, kv_heads):
                _pad_attention(attention, kv_heads * group, kv_heads)
    return clone
