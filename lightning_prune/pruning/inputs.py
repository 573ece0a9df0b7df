"""Network inputs that are one tensor (an image batch, token ids) or a dict of keyword tensors (a multimodal batch).

A batch is `(inputs, targets)`. A dict `inputs` (e.g. `input_ids`, `attention_mask`, `pixel_values` of a LLaVA
batch) is passed as keyword arguments, `network(**inputs)`, as Torch-Pruning's tracer does with dict examples.
"""

from __future__ import annotations

import torch
from torch import nn

Inputs = torch.Tensor | dict[str, torch.Tensor]


def call_network(network: nn.Module, inputs: Inputs):
    """`network(**inputs)` for a dict, else `network(inputs)`."""
    return network(**inputs) if isinstance(inputs, dict) else network(inputs)


def to_device(inputs: Inputs, device: torch.device | str | None) -> Inputs:
    """`inputs` moved to `device` (each tensor of a dict); None leaves them where they are."""
    if device is None:
        return inputs
    if isinstance(inputs, dict):
        return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in inputs.items()}
    return inputs.to(device)


def first_example(inputs: Inputs) -> Inputs:
    """A batch of one: `inputs[:1]`, or `value[:1]` of every tensor of a dict (cloned)."""
    if isinstance(inputs, dict):
        return {key: value[:1].clone() if isinstance(value, torch.Tensor) else value for key, value in inputs.items()}
    return inputs[:1].clone()
