"""The prunable structure of a network: Torch-Pruning's dependency graph, layer selection, masks, physical pruning.

A *prunable layer* is a `Conv*d`/`Linear` whose output channels can be removed (with everything coupled to them:
BatchNorm, the next layers' inputs, residual partners) or an `nn.MultiheadAttention` whose heads can be removed.
Classifier output layers — those whose outputs reach the network output — are never prunable. Layers are chosen by
glob patterns over module names (`fnmatch`, case-sensitive): `{"conv1": 0.5}`, `{"*layer*.conv1": 0.5}`.
Selected layers coupled through one dependency group (e.g. the last convs of residual blocks of one stage) are
pruned together as one unit set, named after the first of them.

Groups are built on demand (`groups.py`): listing the layers walks the graph without index mapping; a layer's
Torch-Pruning group is built, under a size and time guard, when `select` (or a criterion) needs it. Layers that cannot
be pruned are kept in `refused` with the reason (a channel shuffle, Swin's PatchMerging, a group over the guard).
A layer coupled to grouped convolutions (ResNeXt, RegNet) has `channel_groups` G > 1: its unit is a position inside
a group of channels, pruned in every group at once (Torch-Pruning's own grouped-conv rule), so all groups stay equal.
Swin's window attentions prune their heads (`window_attention.py`).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import torch
import torch_pruning as tp
from torch import nn

from lightning_prune._checks import is_int
from lightning_prune.pruning.attention import is_head_prunable
from lightning_prune.pruning.choice import lowest_units
from lightning_prune.pruning.groups import (
    INDEX_MAPPED,
    GroupRefused,
    channel_groups_of,
    channel_reach,
    check_group,
    guarded_group,
    listing_refusal,
    module_names,
    patch_merging_owners,
)
from lightning_prune.pruning.patterns import matching_layers
from lightning_prune.pruning.slices import ParamSlice, group_slices, masks_from_slices
from lightning_prune.pruning.tracing import build_dependency_graph, sync_torchvision_attributes
from lightning_prune.pruning.window_attention import attention_head_slices, is_window_attention, prune_attention_heads

LayerKind = Literal["channels", "heads", "kv_groups"]
# Float error guard for `ratio * units` (0.29 * 100 is 28.999999999999996 in binary floating point).
_RATIO_EPSILON = 1e-9
_log = logging.getLogger("lightning.pytorch.lightning_prune")


@dataclass(frozen=True)
class PrunableLayer:
    """A layer whose units can be pruned.

    Attributes:
        name: Module name relative to the network.
        kind: `"channels"` (output channels of a conv/linear) or `"heads"` (attention heads).
        units: Number of channels or heads; with `channel_groups` G > 1, channels per group (unit `j` is channel
            `j` of every group: channels `j, j + units, ..., j + (G - 1) * units`).
        channel_groups: G, the equal channel groups that grouped convolutions of the layer's group impose.
    """

    name: str
    kind: LayerKind
    units: int
    channel_groups: int = 1


def check_ratios(layers: dict[str, float]) -> None:
    """Raise if a ratio of `{pattern: ratio}` is not a number in [0, 1)."""
    for pattern, ratio in layers.items():
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
            raise ValueError(f"`layers[{pattern!r}]` must be a ratio in [0, 1), got {ratio!r}.")


def pruned_count(ratio: float, units: int) -> int:
    """Units removed by `ratio`: `floor(ratio * units)` (so 0.5 of 10 filters prunes 5, 0.25 of 10 prunes 2)."""
    return math.floor(ratio * units + _RATIO_EPSILON)


class PruningStructure:
    """What can be pruned in a network and how: groups, per-unit parameter slices, masks and physical pruning.

    Args:
        network: The network (not a copy: `prune` changes it).
        example_input: An input batch the network accepts, e.g. `[1, 1, 32, 32]`.

    Attributes:
        layers: `{name: PrunableLayer}` in module order.
        refused: `{name: reason}` of the conv/linear layers that cannot be pruned (grows when a group fails to build).
    """

    refused: MappingProxyType | dict = MappingProxyType({})  # subclasses that list their own units refuse none

    def __init__(self, network: nn.Module, example_input: torch.Tensor) -> None:
        self.network = network
        self.example_input = example_input
        self.graph, outputs = build_dependency_graph(network, example_input)
        self._output_fns = {out.grad_fn for out in outputs if isinstance(out, torch.Tensor)}
        self.layers: dict[str, PrunableLayer] = {}
        self.refused: dict[str, str] = {}
        self._groups: dict[str, object] = {}
        self._slices: dict[str, list[ParamSlice]] = {}
        self._coupled: dict[str, list[str]] = {}
        self._pruned = False
        merging = patch_merging_owners(network)
        for name, module in network.named_modules():
            if is_window_attention(module) or is_head_prunable(module) and module in self.graph.module2node:
                self.layers[name] = PrunableLayer(name, "heads", module.num_heads)
            elif isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and module in self.graph.module2node:
                self._list_channels(name, module, merging)

    def _list_channels(self, name: str, module: nn.Module, merging: dict[nn.Module, str]) -> None:
        """Add `name` to `layers` (or `refused`) from a walk of the graph; no Torch-Pruning group is built."""
        pruner = self.graph.get_pruner_of_module(module)
        units = pruner.get_out_channels(module) if pruner is not None else None
        if not units or units < 2:
            return
        carriers, consumers = channel_reach(self.graph.module2node[module])
        if any(node.type == tp.ops.OPTYPE.OUTPUT or node.grad_fn in self._output_fns for node in carriers):
            return  # the classifier output (or coupled to it)
        reach = carriers + consumers
        groups = channel_groups_of(reach)
        reason = listing_refusal(self.graph, module, units, reach, merging)
        if reason:
            self.refused[name] = reason
        else:
            self.layers[name] = PrunableLayer(name, "channels", units // groups, groups)

    def _changes_output(self, dep) -> bool:
        """Whether a dependency removes channels of the network output (not merely inputs of the last layer)."""
        if dep.target.type == tp.ops.OPTYPE.OUTPUT:
            return True
        return dep.target.grad_fn in self._output_fns and self.graph.is_out_channel_pruning_fn(dep.handler)

    def _group(self, name: str):
        """The Torch-Pruning group of every channel of layer `name`, built on first use.

        Raises:
            GroupRefused: If the group exceeds the guards, changes the network output, or maps a grouped conv's
                channels other than one-to-one.
        """
        if name not in self._groups:
            layer = self.layers[name]
            group = guarded_group(
                self.graph, self.network.get_submodule(name), list(range(layer.units * layer.channel_groups))
            )
            check_group(self.graph, group, layer.channel_groups, self._changes_output)
            self._groups[name] = group
        return self._groups[name]

    def _build_groups(self, names: list[str]) -> None:
        """Build the groups of the channel layers `names`; a layer whose group fails moves to `refused`."""
        if getattr(self, "graph", None) is None:
            return
        for name in names:
            if self.layers[name].kind != "channels" or name in self._groups:
                continue
            try:
                self._group(name)
            except GroupRefused as reason:
                self.refused[name] = str(reason)
                del self.layers[name]

    def _names_list(self) -> str:
        return ", ".join(self.layers) or "(none)"

    def _refusals(self, names) -> str:
        by_reason: dict[str, list[str]] = {}
        for name in names:
            by_reason.setdefault(self.refused[name], []).append(name)
        return "; ".join(f"{', '.join(members)} ({reason})" for reason, members in by_reason.items())

    def select(self, patterns: dict[str, float]) -> dict[str, float]:
        """Resolve `{glob pattern: ratio}` to `{layer: ratio}` in module order, merging coupled layers.

        A later pattern overrides the ratio of an earlier one for the layers both match. The groups of the matched
        channel layers are built here; layers that cannot be pruned are skipped with one warning naming each and why.

        Raises:
            ValueError: If a pattern matches no prunable layer (the message lists them, or the reasons when it only
                matches layers that cannot be pruned); if coupled layers get different ratios; if a layer's heads
                and the embedding dimension of the same attention are both selected.
        """
        check_ratios(patterns)
        chosen: dict[str, float] = {}
        skipped: list[str] = []
        for pattern, ratio in patterns.items():
            candidates = matching_layers(pattern, [*self.layers, *self.refused])  # globs, and `a-b` layer ranges
            self._build_groups([name for name in candidates if name in self.layers])
            matched = [name for name in candidates if name in self.layers]
            refused = [name for name in candidates if name in self.refused]
            if not matched and refused:
                raise ValueError(
                    f"`layers` pattern {pattern!r} must match a prunable layer, got only layers that cannot be "
                    f"pruned: {self._refusals(refused)}."
                )
            if not matched:
                raise ValueError(
                    f"`layers` pattern {pattern!r} must match a prunable layer, got no match; "
                    f"prunable layers: {self._names_list()}."
                )
            skipped.extend(name for name in refused if name not in skipped)
            chosen.update(dict.fromkeys(matched, float(ratio)))
        if skipped:
            warnings.warn(f"Pruning skips layers that cannot be pruned: {self._refusals(skipped)}.", stacklevel=2)
        ordered = {name: chosen[name] for name in self.layers if name in chosen}
        return self._merge_coupled(ordered)

    def _merge_coupled(self, ordered: dict[str, float]) -> dict[str, float]:
        self._coupled = {}
        merged: dict[str, float] = {}
        owner: dict[str, str] = {}
        heads = {name for name in ordered if self.layers[name].kind == "heads"}
        names = module_names(self.graph)
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
            for dep, _ in self._group(name):
                member = names.get(dep.target.module)
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

        A layer with G channel groups prunes `floor(ratio * channels per group)` of each group; when that differs
        from `floor(ratio * channels)`, the log says so.

        Raises:
            ValueError: If a ratio would remove every unit of a layer.
        """
        counts = {}
        for name, ratio in ratios.items():
            layer = self.layers[name]
            counts[name] = pruned_count(ratio, layer.units)
            if counts[name] >= layer.units:
                raise ValueError(
                    f"`layers` ratio for {name!r} must leave at least one of its {layer.units} units, got {ratio} "
                    f"(prunes {counts[name]})."
                )
            groups = layer.channel_groups
            if groups > 1 and counts[name] * groups != pruned_count(ratio, layer.units * groups):
                _log.info(
                    f"Pruning: ratio {ratio} of {name!r} rounds to {counts[name]} of the {layer.units} channels of "
                    f"each of its {groups} groups ({counts[name] * groups} of {layer.units * groups}): grouped "
                    "convolutions keep their groups equal."
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
            bad = [i for i in idxs if not is_int(i, 0) or i >= units]
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
        zeros still count in its mean and variance, e.g. for a ViT's embedding dimension or every channel layer
        of a ConvNeXt (LayerNorm over channels in each block).
        """
        if self.layers[name].kind == "heads":
            return True
        across_channels = (tp.ops.OPTYPE.LN, tp.ops.OPTYPE.GN)
        return not any(dep.target.type in across_channels for dep, _ in self._group(name))

    def slices(self, name: str) -> list[ParamSlice]:
        """Every parameter entry of each unit of layer `name` (its whole dependency group)."""
        if name not in self._slices:
            layer = self.layers[name]
            module = self.network.get_submodule(name)
            if layer.kind == "heads":
                self._slices[name] = attention_head_slices(name, module)
            else:
                pieces = group_slices(self.graph, self._group(name))
                if layer.channel_groups > 1:  # channel c of the root is unit c % (channels per group)
                    pieces = [ParamSlice(p.param, p.dim, p.positions, p.units % layer.units) for p in pieces]
                self._slices[name] = pieces
        return self._slices[name]

    def root_slices(self, name: str) -> list[ParamSlice]:
        """The layer's own weight per unit: conv filters / linear rows, or a head's q, k and v rows."""
        layer = self.layers[name]
        module = self.network.get_submodule(name)
        if layer.kind == "heads":
            return attention_head_slices(name, module, root_only=True)
        out_dim = 1 if getattr(module, "transposed", False) else 0
        channels = torch.arange(layer.units * layer.channel_groups)
        return [ParamSlice(f"{name}.weight", out_dim, channels, channels % layer.units)]

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

    def choose_units(
        self, scores: dict[str, torch.Tensor], counts: dict[str, int], global_ranking: bool = False
    ) -> dict[str, list[int]]:
        """The units to prune: the `counts[layer]` lowest scores per layer, or globally (`choice.lowest_units`).

        Structures with their own rules (a transformer decoder's equal query heads per KV group) override it.
        """
        return lowest_units(scores, counts, global_ranking)

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
        stale = False  # index mappings (concat offsets, reshape strides) change only where a pruned group passed
        for name, idxs in indices.items():
            if not idxs:
                continue
            if self.layers[name].kind == "heads":
                heads[name] = sorted(int(i) for i in idxs)
                continue
            layer = self.layers[name]
            channels = sorted(int(j) + g * layer.units for g in range(layer.channel_groups) for j in idxs)
            group = guarded_group(self.graph, self.network.get_submodule(name), channels, refresh=stale)
            group.prune()
            stale = any(dep.target.type in INDEX_MAPPED for dep, _ in group)
        for name, idxs in heads.items():
            prune_attention_heads(self.network, name, idxs)
        sync_torchvision_attributes(self.network)
        history = [[str(n), bool(out), [int(i) for i in idxs]] for n, out, idxs in self.graph.pruning_history()]
        return {"history": history, "heads": heads}
