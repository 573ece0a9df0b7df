"""Building and replaying a network's structure: the one place that picks a transformer decoder's rules
(`transformer.py`) or the general channel/head rules (`structure.py`), so neither imports the other back."""

from __future__ import annotations

import torch
from torch import nn

from lightning_prune.pruning.groups import tolerant_reshapes
from lightning_prune.pruning.structure import PruningStructure
from lightning_prune.pruning.tracing import build_dependency_graph, sync_torchvision_attributes
from lightning_prune.pruning.transformer import DecoderStructure, has_decoder_units, replay_decoder
from lightning_prune.pruning.window_attention import prune_attention_heads


def build_structure(network: nn.Module, example_input: torch.Tensor) -> PruningStructure:
    """The structure of `network`: transformer decoder units (`transformer.py`) if it has any, else channels/heads."""
    if has_decoder_units(network):
        return DecoderStructure(network, example_input)
    return PruningStructure(network, example_input)


def replay_pruning(network: nn.Module, record: dict, example_input: torch.Tensor) -> None:
    """Redo a pruning `record` (from `PruningStructure.prune`) on a freshly built, unpruned network."""
    if record.get("history"):
        graph, _ = build_dependency_graph(network, example_input)
        with tolerant_reshapes():
            graph.load_pruning_history([list(entry) for entry in record["history"]])
    for name, idxs in record.get("heads", {}).items():
        prune_attention_heads(network, name, list(idxs))
    if record.get("decoder_mlp") or record.get("decoder_heads"):
        replay_decoder(network, record)
    sync_torchvision_attributes(network)
