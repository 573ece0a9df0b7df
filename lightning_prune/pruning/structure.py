"""The prunable structure of a network: Torch-Pruning's dependency graph, layer selection, masks, physical pruning.

A *prunable layer* is a `Conv*d`/`Linear` whose output channels can be removed (with everything coupled to them:
BatchNorm, the next layers' inputs, residual partners) or an `nn.MultiheadAttention` whose heads can be removed.
Classifier output layers — those whose outputs reach the network output — are never prunable. Layers are chosen by
glob patterns over module names (`fnmatch`, case-sensitive): `{"conv1": 0.5}`, `{"*layer*.conv1": 0.5}`.
Selected layers coupled through one dependency group (e.g. the last convs of residual blocks of one stage) are
pruned together as one unit set, named after the first of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch_pruning as tp
from torch import nn

from lightning_prune.pruning.attention import head_slices, is_head_prunable, prune_heads
from lightning_prune.pruning.inputs import first_example
from lightning_prune.pruning.modes import modes_restored
from lightning_prune.pruning.patterns import matching_layers
from lightning_prune.pruning.slices import ParamSlice, group_slices, masks_from_slices

LayerKind = Literal["channels", "heads", "kv_groups"]
# Float error guard for `ratio * units` (0.29 * 100 is 28.999999999999996 in binary floating point).
_RATIO_EPSILON = 1e-9


@dataclass(frozen=True)
class PrunableLayer:
    """A layer whose units can be pruned.

    Attributes:
        name: Module name relative to the network.
        kind: `"channels"` (output channels of a conv/linear) or `"heads"` (attention heads).
        units: Number of channels or heads.
    """

    name: str
    kind: LayerKind
    units: int


def check_ratios(layers: dict[str, float]) -> None:
    """Raise if a ratio of `{pattern: ratio}` is not a number in [0, 1)."""
    for pattern, ratio in layers.items():
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
            raise ValueError(f"`layers[{pattern!r}]` must be a ratio in [0, 1), got {ratio!r}.")


def pruned_count(ratio: float, units: int) -> int:
    """Units removed by `ratio`: `floor(ratio * units)` (so 0.5 of 10 filters prunes 5, 0.25 of 10 prunes 2)."""
    return math.floor(ratio * units + _RATIO_EPSILON)


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
    with modes_restored(network, evaluate=False), torch.inference_mode(False), torch.enable_grad():
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


class PruningStructure:
    """What can be pruned in a network and how: groups, per-unit parameter slices, masks and physical pruning.

    Args:
        network: The network (not a copy: `prune` changes it).
        example_input: An input batch the network accepts, e.g. `[1, 1, 32, 32]`.
    """

    def __init__(self, network: nn.Module, example_input: torch.Tensor) -> None:
        self.network = network
        self.example_input = example_input
        self.graph, outputs = build_dependency_graph(network, example_input)
        output_grad_fns = {out.grad_fn for out in outputs if isinstance(out, torch.Tensor)}
        self.layers: dict[str, PrunableLayer] = {}
        self._groups: dict[str, object] = {}
        self._slices: dict[str, list[ParamSlice]] = {}
        self._coupled: dict[str, list[str]] = {}
        self._pruned = False
        for name, module in network.named_modules():
            if module not in self.graph.module2node:
                continue
            if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
                pruner = self.graph.get_pruner_of_module(module)
                units = pruner.get_out_channels(module) if pruner is not None else None
                if not units or units < 2:
                    continue
                group = self.graph.get_pruning_group(module, pruner.prune_out_channels, list(range(units)))
                if any(self._changes_output(dep, output_grad_fns) for dep, _ in group):
                    continue  # the classifier output (or coupled to it)
                self.layers[name] = PrunableLayer(name, "channels", units)
                self._groups[name] = group
            elif is_head_prunable(module):
                self.layers[name] = PrunableLayer(name, "heads", module.num_heads)

    def _changes_output(self, dep, output_grad_fns: set) -> bool:
        """Whether a dependency removes channels of the network output (not merely inputs of the last layer)."""
        if dep.target.type == tp.ops.OPTYPE.OUTPUT:
            return True
        return dep.target.grad_fn in output_grad_fns and self.graph.is_out_channel_pruning_fn(dep.handler)

    def _names_list(self) -> str:
        return ", ".join(self.layers) or "(none)"

    def select(self, patterns: dict[str, float]) -> dict[str, float]:
        """Resolve `{glob pattern: ratio}` to `{layer: ratio}` in module order, merging coupled layers.

        A later pattern overrides the ratio of an earlier one for the layers both match.

        Raises:
            ValueError: If a pattern matches no prunable layer (the message lists them); if coupled layers get
                different ratios; if a layer's heads and the embedding dimension of the same attention are both
                selected.
        """
        check_ratios(patterns)
        chosen: dict[str, float] = {}
        for pattern, ratio in patterns.items():
            matched = matching_layers(pattern, list(self.layers))  # globs, and `a-b` layer ranges
            if not matched:
                raise ValueError(
                    f"`layers` pattern {pattern!r} must match a prunable layer, got no match; "
                    f"prunable layers: {self._names_list()}."
                )
            chosen.update(dict.fromkeys(matched, float(ratio)))
        ordered = {name: chosen[name] for name in self.layers if name in chosen}
        return self._merge_coupled(ordered)

    def _merge_coupled(self, ordered: dict[str, float]) -> dict[str, float]:
        self._coupled = {}
        merged: dict[str, float] = {}
        owner: dict[str, str] = {}
        heads = {name for name in ordered if self.layers[name].kind == "heads"}
        for name, ratio in ordered.items():
            if name in owner:
                lead = owner[name]
                if ratio != merged[lead]:
                    raise ValueError(
                        f"`layers` must give coupled layers one ratio: {name!r} shares a dependency group with "
                        f"{lead!r}, got {ratio} and {merged[lead]}."
                    )
                continue
            merged[name] = ratio
            self._coupled[name] = [name]
            if self.layers[name].kind == "heads":
                continue
            for dep, _ in self._groups[name]:
                member = self.graph._module2name.get(dep.target.module)
                if isinstance(dep.target.module, nn.MultiheadAttention) and member in heads:
                    raise ValueError(
                        f"`layers` must not select both the heads of {member!r} and {name!r}, which prunes the "
                        f"embedding dimension of that attention; choose one."
                    )
                if member in ordered and member != name and self.graph.is_out_channel_pruning_fn(dep.handler):
                    owner[member] = name
                    self._coupled[name].append(member)
        return merged

    def coupled(self, name: str) -> list[str]:
        """Selected layers pruned together with `name` (itself first); valid after `select`."""
        return self._coupled.get(name, [name])

    def pruned_counts(self, ratios: dict[str, float]) -> dict[str, int]:
        """`{layer: number of units to prune}` for `{layer: ratio}`.

        Raises:
            ValueError: If a ratio would remove every unit of a layer.
        """
        counts = {}
        for name, ratio in ratios.items():
            units = self.layers[name].units
            counts[name] = pruned_count(ratio, units)
            if counts[name] >= units:
                raise ValueError(
                    f"`layers` ratio for {name!r} must leave at least one of its {units} units, got {ratio} "
                    f"(prunes {counts[name]})."
                )
        return counts

    def check_indices(self, indices: dict[str, list[int]]) -> dict[str, list[int]]:
        """Validate explicit `{layer: pruned unit indices}` and return them sorted, in module order.

        Raises:
            ValueError: For an unknown layer (the message lists the prunable ones), an index out of range, a
                duplicate index, or indices that remove every unit.
        """
        for name, idxs in indices.items():
            if name not in self.layers:
                raise ValueError(
                    f"`indices` must name prunable layers, got {name!r}; prunable layers: {self._names_list()}."
                )
            units = self.layers[name].units
            bad = [i for i in idxs if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < units]
            if bad:
                raise ValueError(f"`indices[{name!r}]` must be integers in [0, {units}), got {bad}.")
            if len(set(idxs)) != len(idxs):
                raise ValueError(f"`indices[{name!r}]` must not repeat an index, got {sorted(idxs)}.")
            if len(idxs) >= units:
                raise ValueError(
                    f"`indices[{name!r}]` must leave at least one of the layer's {units} units, got all of them."
                )
        self._merge_coupled(dict.fromkeys((n for n in self.layers if n in indices), 0.0))
        for lead, members in self._coupled.items():
            if len(members) > 1 and lead in indices:
                raise ValueError(
                    f"`indices` must name one layer per dependency group: {members} are coupled; give {lead!r} only."
                )
        return {name: sorted(indices[name]) for name in self.layers if name in indices}

    def mask_is_exact(self, name: str) -> bool:
        """Whether zeroing layer `name`'s units equals removing them.

        True unless the group runs through a normalization over the pruned dimension (LayerNorm, GroupNorm):
        zeros still count in its mean and variance, e.g. for a ViT's embedding dimension.
        """
        if self.layers[name].kind == "heads":
            return True
        across_channels = (tp.ops.OPTYPE.LN, tp.ops.OPTYPE.GN)
        return not any(dep.target.type in across_channels for dep, _ in self._groups[name])

    def slices(self, name: str) -> list[ParamSlice]:
        """Every parameter entry of each unit of layer `name` (its whole dependency group)."""
        if name not in self._slices:
            layer = self.layers[name]
            module = self.network.get_submodule(name)
            if layer.kind == "heads":
                self._slices[name] = head_slices(name, module)
            else:
                self._slices[name] = group_slices(self.graph, self._groups[name])
        return self._slices[name]

    def root_slices(self, name: str) -> list[ParamSlice]:
        """The layer's own weight per unit: conv filters / linear rows, or a head's q, k and v rows."""
        layer = self.layers[name]
        module = self.network.get_submodule(name)
        if layer.kind == "heads":
            return head_slices(name, module, root_only=True)
        out_dim = 1 if getattr(module, "transposed", False) else 0
        units = torch.arange(layer.units)
        return [ParamSlice(f"{name}.weight", out_dim, units, units)]

    def parameter_masks(self, indices: dict[str, list[int]]) -> dict[str, torch.Tensor]:
        """0/1 masks (1 = kept) that zero the whole dependency group of every pruned unit.

        Args:
            indices: `{layer: pruned unit indices}`.

        Returns:
            `{parameter name: mask}` for the parameters touched (names relative to the network).
        """
        parameters = dict(self.network.named_parameters())
        masks: dict[str, torch.Tensor] = {}
        for name, idxs in indices.items():
            for param, mask in masks_from_slices(parameters, self.slices(name), idxs).items():
                masks[param] = masks[param] * mask if param in masks else mask
        return masks

    def prune(self, indices: dict[str, list[int]]) -> dict[str, list]:
        """Remove the units physically (channels through Torch-Pruning, heads by module swap); once per structure.

        Args:
            indices: `{layer: pruned unit indices}`.

        Returns:
            The record to replay it: `{"history": Torch-Pruning history, "heads": {attention: heads}}`, plain types.

        Raises:
            RuntimeError: If this structure has already pruned its network (build a new one).
        """
        if self._pruned:
            raise RuntimeError("this PruningStructure has already pruned its network; build a new one.")
        self._pruned = True
        heads = {}
        for name, idxs in indices.items():
            if not idxs:
                continue
            if self.layers[name].kind == "heads":
                heads[name] = sorted(int(i) for i in idxs)
                continue
            module = self.network.get_submodule(name)
            pruner = self.graph.get_pruner_of_module(module)
            self.graph.get_pruning_group(module, pruner.prune_out_channels, sorted(idxs)).prune()
        for name, idxs in heads.items():
            prune_heads(self.network, name, idxs)
        sync_torchvision_attributes(self.network)
        history = [[str(n), bool(out), [int(i) for i in idxs]] for n, out, idxs in self.graph.pruning_history()]
        return {"history": history, "heads": heads}


def build_structure(network: nn.Module, example_input: torch.Tensor) -> PruningStructure:
    """The structure of `network`: transformer decoder units (`transformer.py`) if it has any, else channels/heads."""
    from lightning_prune.pruning.transformer import DecoderStructure, has_decoder_units

    if has_decoder_units(network):
        return DecoderStructure(network, example_input)
    return PruningStructure(network, example_input)


def replay_pruning(network: nn.Module, record: dict, example_input: torch.Tensor) -> None:
    """Redo a pruning `record` (from `PruningStructure.prune`) on a freshly built, unpruned network."""
    if record.get("history"):
        graph, _ = build_dependency_graph(network, example_input)
        graph.load_pruning_history([list(entry) for entry in record["history"]])
    for name, idxs in record.get("heads", {}).items():
        prune_heads(network, name, list(idxs))
    if record.get("decoder_mlp") or record.get("decoder_heads"):
        from lightning_prune.pruning.transformer import replay_decoder

        replay_decoder(network, record)
    sync_torchvision_attributes(network)
