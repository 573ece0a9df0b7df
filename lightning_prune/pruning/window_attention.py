"""Attention-head pruning of Swin's `ShiftedWindowAttention` (torchvision's `swin_t`/`swin_s`/`swin_b`).

The module's `forward` calls `F.linear` on `qkv.weight` and `proj.weight`, so Torch-Pruning never sees `qkv`/`proj` as
layers. A head is a unit of its own here: its q, k and v rows of `qkv` (weight and bias), its columns of
`proj.weight`, and its column of `relative_position_bias_table` (one learned bias per head). Masking zeros them: a
head with q = k = v = 0 attends with the bias alone and outputs zeros, which the zeroed `proj` columns drop, so mask
mode is exact. Physical pruning swaps the module for `HeadPrunedWindowAttention`, which keeps the head size of the
original (`dim / num_heads`); torchvision's functional attention would derive it from the block width instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.swin_transformer import ShiftedWindowAttention

from lightning_prune.pruning.attention import head_slices, prune_heads
from lightning_prune.pruning.slices import ParamSlice


def is_window_attention(module: nn.Module) -> bool:
    """Swin (v1) shifted-window attention with two heads or more (v2's cosine attention is not handled)."""
    return type(module) is ShiftedWindowAttention and module.num_heads > 1


def _sizes(attention: nn.Module) -> tuple[int, int, int]:
    """(heads, head size, block width) of a window attention."""
    heads = attention.num_heads
    return heads, attention.qkv.out_features // (3 * heads), attention.proj.out_features


def window_head_slices(name: str, attention: nn.Module, root_only: bool = False) -> list[ParamSlice]:
    """Parameter slices of every head of a window attention (`is_window_attention` or already head-pruned).

    Args:
        name: Module name of the attention in the network.
        attention: The module.
        root_only: Only the q/k/v rows of `qkv.weight` (what the L1 criterion reads).

    Returns:
        Slices of `qkv.weight`/`qkv.bias` (dim 0), `proj.weight` (dim 1), `relative_position_bias_table` (dim 1).
    """
    heads, size, _ = _sizes(attention)
    inner = heads * size
    rows = [part * inner + head * size + j for head in range(heads) for part in range(3) for j in range(size)]
    row_owner = [head for head in range(heads) for _ in range(3 * size)]
    as_long = torch.as_tensor
    slices = [ParamSlice(f"{name}.qkv.weight", 0, as_long(rows), as_long(row_owner))]
    if root_only:
        return slices
    if attention.qkv.bias is not None:
        slices.append(ParamSlice(f"{name}.qkv.bias", 0, as_long(rows), as_long(row_owner)))
    columns = list(range(inner))
    slices.append(ParamSlice(f"{name}.proj.weight", 1, as_long(columns), as_long([c // size for c in columns])))
    every_head = as_long(list(range(heads)))
    slices.append(ParamSlice(f"{name}.relative_position_bias_table", 1, every_head, every_head))
    return slices


def _shift_mask(padded: tuple[int, int], window: list[int], shift: list[int], device: torch.device) -> torch.Tensor:
    """`[windows, T, T]` additive mask: -100 between tokens that the cyclic shift brought from different regions."""
    region = torch.zeros(padded, device=device)
    bands = [[(0, p - w), (p - w, p - s), (p - s, p)] for p, w, s in zip(padded, window, shift, strict=True)]
    for i, (top, bottom) in enumerate(bands[0]):
        for j, (left, right) in enumerate(bands[1]):
            region[top:bottom, left:right] = 3 * i + j
    labels = region.view(padded[0] // window[0], window[0], padded[1] // window[1], window[1])
    labels = labels.permute(0, 2, 1, 3).reshape(-1, window[0] * window[1])
    differ = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(differ.shape, device=device).masked_fill(differ, -100.0)


class HeadPrunedWindowAttention(nn.Module):
    """Shifted-window attention holding only the kept heads of a `ShiftedWindowAttention`.

    Same input and output as the original (`[B, H, W, C]`), same window, shift, padding, relative position bias
    and `1 / sqrt(head size)` scaling; `qkv` maps `C` to `3 * heads * head_size` and `proj` maps `heads * head_size`
    back to `C`.
    """

    def __init__(self, attention: nn.Module, pruned_heads: list[int]) -> None:
        super().__init__()
        heads, size, width = _sizes(attention)
        kept = [h for h in range(heads) if h not in set(pruned_heads)]
        self.window_size, self.shift_size = list(attention.window_size), list(attention.shift_size)
        self.num_heads, self.head_dim = len(kept), size
        self.attention_dropout, self.dropout = attention.attention_dropout, attention.dropout
        weight = attention.qkv.weight
        inner_rows = torch.tensor([h * size + j for h in kept for j in range(size)], device=weight.device)
        qkv_rows = torch.cat([part * heads * size + inner_rows for part in range(3)])
        self.qkv = nn.Linear(width, 3 * len(kept) * size, bias=attention.qkv.bias is not None)
        self.proj = nn.Linear(len(kept) * size, width, bias=attention.proj.bias is not None)
        self.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            self.qkv.weight.copy_(weight[qkv_rows])
            if attention.qkv.bias is not None:
                self.qkv.bias.copy_(attention.qkv.bias[qkv_rows])
            self.proj.weight.copy_(attention.proj.weight[:, inner_rows])
            if attention.proj.bias is not None:
                self.proj.bias.copy_(attention.proj.bias)
        table = attention.relative_position_bias_table.detach()[:, torch.tensor(kept, device=weight.device)]
        self.relative_position_bias_table = nn.Parameter(table.clone())
        self.register_buffer("relative_position_index", attention.relative_position_index.clone())
        self.train(attention.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend within (shifted) windows of `x` `[B, H, W, C]`; returns `[B, H, W, C]`."""
        batch, height, width, channels = x.shape
        win_h, win_w = self.window_size
        x = F.pad(x, (0, 0, 0, -width % win_w, 0, -height % win_h))
        padded = (x.shape[1], x.shape[2])
        shift = [s if w < p else 0 for s, w, p in zip(self.shift_size, self.window_size, padded, strict=True)]
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        rows, cols, tokens = padded[0] // win_h, padded[1] // win_w, win_h * win_w
        windows = x.view(batch, rows, win_h, cols, win_w, channels).permute(0, 1, 3, 2, 4, 5)
        windows = windows.reshape(-1, tokens, channels)
        qkv = self.qkv(windows).view(-1, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.head_dim**-0.5, qkv[1], qkv[2]
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        scores = q @ k.transpose(-2, -1) + bias.view(tokens, tokens, -1).permute(2, 0, 1).unsqueeze(0)
        if any(shift):
            mask = _shift_mask(padded, self.window_size, shift, x.device).to(scores.dtype)
            scores = (scores.view(batch, rows * cols, self.num_heads, tokens, tokens) + mask[None, :, None])
            scores = scores.view(-1, self.num_heads, tokens, tokens)
        weights = F.dropout(scores.softmax(dim=-1), self.attention_dropout, self.training)
        out = (weights @ v).transpose(1, 2).reshape(-1, tokens, self.num_heads * self.head_dim)
        out = F.dropout(self.proj(out), self.dropout, self.training)
        out = out.view(batch, rows, cols, win_h, win_w, channels).permute(0, 1, 3, 2, 4, 5)
        out = out.reshape(batch, padded[0], padded[1], channels)
        if any(shift):
            out = torch.roll(out, shifts=(shift[0], shift[1]), dims=(1, 2))
        return out[:, :height, :width, :].contiguous()


def prune_window_heads(network: nn.Module, name: str, pruned_heads: list[int]) -> None:
    """Replace the window attention called `name` in `network` by a `HeadPrunedWindowAttention` without the heads."""
    parent_name, _, child = name.rpartition(".")
    parent = network.get_submodule(parent_name) if parent_name else network
    setattr(parent, child, HeadPrunedWindowAttention(getattr(parent, child), pruned_heads))


def attention_head_slices(name: str, module: nn.Module, root_only: bool = False) -> list[ParamSlice]:
    """Head slices of an `nn.MultiheadAttention` or a Swin window attention (pruned or not)."""
    if hasattr(module, "relative_position_bias_table"):
        return window_head_slices(name, module, root_only)
    return head_slices(name, module, root_only)


def prune_attention_heads(network: nn.Module, name: str, heads: list[int]) -> None:
    """Remove heads of the `nn.MultiheadAttention` or Swin window attention called `name`."""
    if is_window_attention(network.get_submodule(name)):
        prune_window_heads(network, name, heads)
    else:
        prune_heads(network, name, heads)
