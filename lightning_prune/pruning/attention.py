"""Attention-head pruning of `nn.MultiheadAttention` (torchvision's ViT uses it in every encoder block).

Torch-Pruning prunes the *embedding* dimension of `nn.MultiheadAttention` (shared with the residual stream), not its
heads: the module packs the q/k/v projections into one `in_proj_weight` and ties the head size to `embed_dim /
num_heads`, so it cannot hold fewer heads. Here a head is a prunable unit of its own: its q, k and v rows of
`in_proj_weight` / `in_proj_bias` and its columns of `out_proj.weight`. Mask mode zeros them (a head whose q, k and
v are zero outputs zeros); physical mode swaps the module for `HeadPrunedAttention`, which keeps the kept heads'
weights in separate q/k/v projections. Either way the embedding dimension, hence the rest of the network, is
untouched.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune.pruning.slices import ParamSlice


def is_head_prunable(module: nn.Module) -> bool:
    """Whether `module` is an `nn.MultiheadAttention` whose heads can be pruned here.

    Packed projections (`kdim == vdim == embed_dim`), no `bias_k`/`bias_v`, no `add_zero_attn`, two heads or more.
    """
    return (
        isinstance(module, nn.MultiheadAttention)
        and module.kdim == module.embed_dim
        and module.vdim == module.embed_dim
        and module.bias_k is None
        and not module.add_zero_attn
        and module.num_heads > 1
    )


def _head_rows(attention: nn.MultiheadAttention) -> tuple[list[int], list[int]]:
    """Rows of `in_proj_weight` of each head (its q, k and v rows) and the head owning each row."""
    e, h = attention.embed_dim, attention.num_heads
    d = e // h
    rows = [part * e + head * d + j for head in range(h) for part in range(3) for j in range(d)]
    owners = [head for head in range(h) for _ in range(3 * d)]
    return rows, owners


def head_slices(name: str, attention: nn.MultiheadAttention, root_only: bool = False) -> list[ParamSlice]:
    """Parameter slices of every head of `attention`.

    Args:
        name: Module name of `attention` in the network.
        attention: A module for which `is_head_prunable` holds.
        root_only: Only the q/k/v rows of `in_proj_weight` (what the L1 criterion reads).

    Returns:
        Slices of `in_proj_weight` (dim 0), `in_proj_bias` and `out_proj.weight` (dim 1); units are head indices.
    """
    rows, owners = _head_rows(attention)
    as_long = torch.as_tensor
    slices = [ParamSlice(f"{name}.in_proj_weight", 0, as_long(rows), as_long(owners))]
    if root_only:
        return slices
    if attention.in_proj_bias is not None:
        slices.append(ParamSlice(f"{name}.in_proj_bias", 0, as_long(rows), as_long(owners)))
    d = attention.embed_dim // attention.num_heads
    columns = list(range(attention.embed_dim))
    slices.append(ParamSlice(f"{name}.out_proj.weight", 1, as_long(columns), as_long([c // d for c in columns])))
    return slices


class HeadPrunedAttention(nn.Module):
    """Multi-head attention holding only the kept heads of an `nn.MultiheadAttention`.

    Same call signature and outputs as `nn.MultiheadAttention` (`forward(query, key, value, ...) -> (output,
    weights | None)`); the head size and the `1 / sqrt(head_dim)` scaling are those of the original module.

    Args:
        embed_dim: Input and output width `E`.
        num_heads: Heads kept `H'`.
        head_dim: Width of one head `d` (the original `E / H`).
        bias: Whether the projections have biases.
        batch_first: Inputs are `[B, L, E]` (else `[L, B, E]`).
        dropout: Dropout on the attention weights in training.
    """

    def __init__(
        self, embed_dim: int, num_heads: int, head_dim: int, bias: bool = True, batch_first: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.batch_first, self.dropout = batch_first, dropout
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.v_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    @classmethod
    def from_multihead(cls, attention: nn.MultiheadAttention, pruned_heads: list[int]) -> HeadPrunedAttention:
        """Copy the kept heads of `attention` into a new module (same device and dtype)."""
        e, h = attention.embed_dim, attention.num_heads
        d = e // h
        kept = [head for head in range(h) if head not in set(pruned_heads)]
        weight = attention.in_proj_weight
        pruned = cls(e, len(kept), d, attention.in_proj_bias is not None, attention.batch_first, attention.dropout)
        pruned = pruned.to(device=weight.device, dtype=weight.dtype)
        inner_rows = torch.tensor([head * d + j for head in kept for j in range(d)], device=weight.device)
        with torch.no_grad():
            for part, projection in enumerate((pruned.q_proj, pruned.k_proj, pruned.v_proj)):
                projection.weight.copy_(weight[part * e + inner_rows])
                if attention.in_proj_bias is not None:
                    projection.bias.copy_(attention.in_proj_bias[part * e + inner_rows])
            pruned.out_proj.weight.copy_(attention.out_proj.weight[:, inner_rows])
            if attention.out_proj.bias is not None:
                pruned.out_proj.bias.copy_(attention.out_proj.bias)
        return pruned.train(attention.training)

    def _additive_mask(
        self, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, batch: int, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """One float mask `[B, H', L, S]` (or broadcastable) to add to the scores; True in a bool mask = masked."""

        def additive(mask: torch.Tensor) -> torch.Tensor:
            if mask.dtype == torch.bool:
                return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
            return mask.to(dtype)

        total = None
        if attn_mask is not None:
            if attn_mask.dim() != 2:
                raise ValueError(
                    f"`attn_mask` of HeadPrunedAttention must be [L, S] (per-head masks do not survive head "
                    f"pruning), got shape {list(attn_mask.shape)}."
                )
            total = additive(attn_mask)
        if key_padding_mask is not None:
            padding = additive(key_padding_mask)[:, None, None, :]
            total = padding if total is None else total + padding
        return total

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend `query` `[B, L, E]` to `key`/`value` `[B, S, E]` (sequence-first when not `batch_first`).

        Returns:
            Output shaped like `query`, and the attention weights `[B, L, S]` (head mean) or `[B, H', L, S]` when
            `need_weights`, else None.
        """
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        batch, length, _ = query.shape

        def heads(projected: torch.Tensor) -> torch.Tensor:  # [B, T, H'd] -> [B, H', T, d]
            return projected.view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(query)), heads(self.k_proj(key)), heads(self.v_proj(value))
        mask = self._additive_mask(attn_mask, key_padding_mask, batch, q.dtype)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            if mask is not None:
                scores = scores + mask
            elif is_causal:
                causal = torch.ones(length, k.shape[-2], dtype=torch.bool, device=q.device).triu(1)
                scores = scores.masked_fill(causal, float("-inf"))
            weights = F.dropout(scores.softmax(dim=-1), dropout, self.training)
            out = weights @ v
            weights = weights.mean(dim=1) if average_attn_weights else weights
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal and mask is None
            )
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim))
        return (out if self.batch_first else out.transpose(0, 1)), weights


def prune_heads(network: nn.Module, name: str, pruned_heads: list[int]) -> None:
    """Replace the `nn.MultiheadAttention` called `name` in `network` by a `HeadPrunedAttention` without the heads.

    Args:
        network: The network holding the attention module.
        name: Its dotted module name.
        pruned_heads: Head indices to remove.
    """
    parent_name, _, child = name.rpartition(".")
    parent = network.get_submodule(parent_name) if parent_name else network
    setattr(parent, child, HeadPrunedAttention.from_multihead(getattr(parent, child), pruned_heads))
