"""The LLM side of a family's base model, by sequence position: its decoder layers, and a decoder layer's inputs
(4-D attention mask, RoPE cos / sin, position ids) gathered at the positions a cut keeps."""

from __future__ import annotations

import torch
from torch import nn

from lightning_prune.dycoke.kv_pruning import gather_positions


def decoder_layers(base: nn.Module) -> nn.ModuleList:
    """The LLM decoder layers of a family's base model (every served family names them `language_model.layers`)."""
    return base.language_model.layers


def gather_sequence(name: str, value, positions: torch.Tensor):
    """`value` at `positions` along its sequence dimension(s)."""
    if name == "position_embeddings":
        return tuple(gather_sequence("rope", part, positions) for part in value)
    if name == "attention_mask":
        if value.dim() != 4:
            raise ValueError(f"Expected a 4-D attention mask [batch, 1, query, key], got shape {tuple(value.shape)}.")
        mask = value.expand(positions.shape[0], *value.shape[1:])
        return gather_positions(gather_positions(mask, positions, 2), positions, 3)
    # RoPE cos / sin `[..., B, S, d]` or position ids `[..., B, S]`: the batch dimension comes right before S.
    sequence_dim = value.dim() - 2 if name == "rope" else value.dim() - 1
    index = positions.view(*([1] * (sequence_dim - 1)), *positions.shape, *([1] * (value.dim() - sequence_dim - 1)))
    shape = list(value.shape)
    shape[sequence_dim] = positions.shape[1]
    shape[sequence_dim - 1] = positions.shape[0]
    expanded = value.expand(*value.shape[:sequence_dim - 1], positions.shape[0], *value.shape[sequence_dim:])
    return expanded.gather(sequence_dim, index.expand(shape))
