"""Tracing a network into Torch-Pruning's dependency graph, and torchvision attributes that follow pruned shapes."""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from lightning_prune.pruning.groups import tolerant_reshapes
from lightning_prune.pruning.inputs import first_example
from lightning_prune.pruning.modes import modes_restored


def build_dependency_graph(network: nn.Module, example_input: torch.Tensor) -> tuple[tp.DependencyGraph, list]:
    """Trace `network` into a Torch-Pruning dependency graph, leaving its train/eval flags as they were.

    Args:
        network: The network.
        example_input: An input batch `[B, ...]` the network accepts.

    Returns:
        The graph and the flat list of output tensors of the tracing forward pass.
    """
    outputs: list[torch.Tensor] = []

    def keep_outputs(out):
        # A transformers output also holds the KV cache, which is no output to trace: keep the logits.
        out = getattr(out, "logits", out)
        outputs.extend(tp.utils.flatten_as_list(out))
        return out

    # Callers may sit in a validation hook: tracing needs autograd. The trace runs in the network's own mode.
    with modes_restored(network, evaluate=False), torch.inference_mode(False), torch.enable_grad(), tolerant_reshapes():
        graph = tp.DependencyGraph().build_dependency(
            network, first_example(example_input), output_transform=keep_outputs, verbose=False
        )
    return graph, outputs


def sync_torchvision_attributes(network: nn.Module) -> None:
    """Keep attributes that torchvision models read in `forward` in step with pruned shapes.

    torchvision's `VisionTransformer` reshapes by `self.hidden_dim`, which must follow `conv_proj` when the
    embedding dimension is pruned.
    """
    conv_proj = getattr(network, "conv_proj", None)
    if isinstance(getattr(network, "hidden_dim", None), int) and isinstance(conv_proj, nn.Conv2d):
        network.hidden_dim = conv_proj.out_channels
