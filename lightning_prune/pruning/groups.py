"""Torch-Pruning groups on demand: a cheap reach walk for listing, and a guarded group build for the chosen layers.

Torch-Pruning's `DependencyGraph.get_pruning_group` walks the graph from a root layer, mapping channel indices through
every reshape/concat/split on the way. Two things go wrong on some torchvision classifiers:

- ShuffleNet v2's channel shuffle (`view(B, 2, C/2, H, W)`) makes the reshape index mapping divide by zero, which
  already breaks the graph build. `tolerant_reshapes` turns that reshape into an *unmapped* one (recorded on the graph),
  and every layer whose channels reach it is refused.
- Swin's PatchMerging concatenates 2x2 neighbours into 4C channels; the index mapping of its group grows without bound
  (over 24 GB for Swin-T). `guarded_group` builds a group with a cap on the indices it holds and on its time.

`channel_reach` answers, without index mapping, which graph nodes a layer's output channels reach (forward to the
layers consuming them, backward from joins to the other producers): enough to list the prunable layers of a network
(is the layer a classifier output? does it reach an unmapped reshape or a PatchMerging?) without building any group.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator

import torch_pruning as tp
from torch import nn
from torch_pruning import _helpers
from torch_pruning.dependency import index_mapping

_OPTYPE = tp.ops.OPTYPE
# Nodes where a channel dimension ends (their inputs) or starts (their outputs); every other node passes channels on.
_BOUNDARIES = {_OPTYPE.CONV, _OPTYPE.LINEAR, _OPTYPE.EMBED, _OPTYPE.LSTM}
# Nodes whose Torch-Pruning index mapping depends on channel counts (recomputed after pruning through them).
INDEX_MAPPED = {_OPTYPE.CONCAT, _OPTYPE.SPLIT, _OPTYPE.RESHAPE, _OPTYPE.UNBIND, _OPTYPE.EXPAND, _OPTYPE.SLICE}
# Guards of `guarded_group`: the indices a group may hold over all its items, and its build time.
GROUP_MAX_INDICES = 2_000_000
GROUP_MAX_SECONDS = 30.0


class GroupRefused(Exception):
    """A layer's pruning group cannot be built or used; the message says why."""


def module_names(graph: tp.DependencyGraph) -> dict:
    """`{module: name}` of the traced network, from the public `named_modules()` (not the graph's private map)."""
    return {module: name for name, module in graph.model.named_modules()}


def parameter_names(graph: tp.DependencyGraph) -> dict:
    """`{parameter: name}` of the traced network, from the public `named_parameters()`."""
    return {parameter: name for name, parameter in graph.model.named_parameters()}


def is_depthwise(module: nn.Module) -> bool:
    """A convolution with one filter per input channel (`groups == in_channels == out_channels`)."""
    return (
        isinstance(module, nn.modules.conv._ConvNd)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def grouped_conv_groups(module: nn.Module) -> int:
    """`groups` of a grouped, non-depthwise convolution; 1 for any other module."""
    if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and not is_depthwise(module):
        return module.groups
    return 1


@contextlib.contextmanager
def tolerant_reshapes() -> Iterator[None]:
    """Within the block, a reshape whose Torch-Pruning index mapping fails is left unmapped and recorded.

    The failing nodes are added to `graph.unmapped_reshapes` (a set on the graph object) so that the layers reaching
    them can be refused. Only `ZeroDivisionError` (the channel shuffle) is caught.
    """
    original = index_mapping.update_reshape_index_mapping

    def tolerant(graph, node):
        try:
            original(graph, node)
        except ZeroDivisionError:
            if not hasattr(graph, "unmapped_reshapes"):
                graph.unmapped_reshapes = set()
            graph.unmapped_reshapes.add(node)

    index_mapping.update_reshape_index_mapping = tolerant
    try:
        yield
    finally:
        index_mapping.update_reshape_index_mapping = original


def _is_boundary(node) -> bool:
    return node.type in _BOUNDARIES and not (node.type == _OPTYPE.CONV and is_depthwise(node.module))


def channel_reach(root) -> tuple[list, list]:
    """Graph nodes that the output channels of `root` (a graph node) reach: Torch-Pruning's group without indices.

    From a producer, channels flow forward through every node up to the layers that consume them (their inputs end
    the walk); at a pass-through node (norms, activations, joins, depthwise convs, attention) they also flow
    backward to the other producers, whose outputs are followed in turn. A superset of the group's nodes.

    Returns:
        The nodes whose output carries the channels (root, pass-through nodes, coupled producers), and the
        consuming layers (conv/linear whose input the channels are).
    """
    seen = {root}
    carriers, consumers = [root], []
    stack = [root]
    while stack:
        node = stack.pop()
        neighbours = [(n, False) for n in node.outputs]
        if not _is_boundary(node):
            neighbours += [(n, True) for n in node.inputs]
        for nxt, output_side in neighbours:
            if nxt in seen:
                continue
            seen.add(nxt)
            if _is_boundary(nxt) and not output_side:
                consumers.append(nxt)
                continue
            carriers.append(nxt)
            stack.append(nxt)
    return carriers, consumers


def guarded_group(
    graph: tp.DependencyGraph,
    module: nn.Module,
    idxs: list[int],
    refresh: bool = False,
    max_indices: int | None = None,
    max_seconds: float | None = None,
):
    """The Torch-Pruning group that removes output channels `idxs` of `module`, built under guards.

    Same walk and result as `graph.get_pruning_group(module, prune_out_channels, idxs)` (dependencies triggered by the
    pruning of each reached node, indices mapped through each dependency, then merged per target), but it stops as
    soon as the group holds more than `max_indices` indices in all or took more than `max_seconds` (defaults:
    `GROUP_MAX_INDICES`, `GROUP_MAX_SECONDS`). The graph's index
    mappings (concat offsets, reshape strides) are recomputed first only with `refresh` (after channels changed):
    Torch-Pruning recomputes them for every group, which costs most of the time on Swin.

    Raises:
        GroupRefused: When a guard stops the build.
    """
    max_indices = GROUP_MAX_INDICES if max_indices is None else max_indices
    max_seconds = GROUP_MAX_SECONDS if max_seconds is None else max_seconds
    pruner = graph.get_pruner_of_module(module)
    pruning_fn = tp.prune_depthwise_conv_out_channels if is_depthwise(module) else pruner.prune_out_channels
    if refresh:
        with tolerant_reshapes():
            index_mapping.update_index_mapping(graph)
    root = graph.module2node[module]
    start = time.monotonic()
    first = tp.Dependency(pruning_fn, pruning_fn, source=root, target=root)
    items = [(first, [_helpers._HybridIndex(idx=i, root_idx=i) for i in idxs])]
    pending = [items[0]]
    visited = set()
    held = len(idxs)
    while pending:
        dep, current = pending.pop()
        visited.add(dep.target)
        for nxt in dep.target.dependencies:
            if not nxt.is_triggered_by(dep.handler):
                continue
            mapped = current
            for mapping in nxt.index_mapping:
                mapped = mapped if mapping is None else mapping(mapped)
            if not mapped:
                continue
            if nxt.target in visited and any(
                d.target == nxt.target and d.handler == nxt.handler and i == mapped for d, i in items
            ):
                continue
            items.append((nxt, mapped))
            pending.append((nxt, mapped))
            held += len(mapped)
            if held > max_indices:
                raise GroupRefused(f"its dependency group exceeds {max_indices} channel indices (index mapping grows)")
            if time.monotonic() - start > max_seconds:
                raise GroupRefused(f"its dependency group takes more than {max_seconds:g} s to build")
    ignored = getattr(graph, "ignored_params", [])
    group = tp.dependency.Group()
    for dep, mapped in items:
        if isinstance(dep.target.module, nn.Parameter) and any(dep.target.module is p for p in ignored):
            continue
        group.add_and_merge(dep, mapped)
    group._DG = graph
    for k in range(len(group)):
        hybrid = group[k].idxs
        item = _helpers.GroupItem(group[k].dep, _helpers.to_plain_idxs(hybrid))
        item.root_idxs = _helpers.to_root_idxs(hybrid)
        group[k] = item
    return group


def channel_groups_of(nodes: list) -> int:
    """Least common multiple of the `groups` of the grouped (non-depthwise) convolutions among `nodes` (1 if none)."""
    return math.lcm(1, *(grouped_conv_groups(node.module) for node in nodes if node.type == _OPTYPE.CONV))


def patch_merging_owners(network: nn.Module) -> dict[nn.Module, str]:
    """`{module: name of the Swin PatchMerging holding it}` for every module inside a PatchMerging."""
    return {
        sub: owner
        for owner, module in network.named_modules()
        if type(module).__name__ in ("PatchMerging", "PatchMergingV2")
        for sub in module.modules()
    }


def listing_refusal(
    graph: tp.DependencyGraph, module: nn.Module, units: int, reach: list, merging: dict[nn.Module, str]
) -> str | None:
    """Why a conv/linear layer whose channels reach the nodes `reach` cannot be pruned, or None.

    PatchMerging's reduction and the layers reaching a PatchMerging (Swin's residual stream), layers reaching an
    unmapped reshape (ShuffleNet's channel shuffle), and layers whose channels do not split into the groups of the
    grouped convolutions they reach.
    """
    merged = sorted({merging[node.module] for node in reach if node.module in merging})
    groups = channel_groups_of(reach)
    if module in merging:
        return f"it is the reduction of Swin's PatchMerging {merging[module]!r}, not supported"
    if merged:
        return f"its channels reach PatchMerging {merged[0]!r}, whose 2x2 concatenation Torch-Pruning cannot map"
    if any(node in getattr(graph, "unmapped_reshapes", set()) for node in reach):
        return "its channels reach a channel shuffle, a reshape Torch-Pruning cannot map"
    if units % groups:
        return f"its {units} channels do not split into the {groups} groups of a grouped conv"
    return None


def check_group(graph: tp.DependencyGraph, group, channel_groups: int, changes_output) -> None:
    """Refuse a built group that changes the network output or maps a grouped conv's channels other than 1:1.

    Raises:
        GroupRefused: With the reason.
    """
    if any(changes_output(dep) for dep, _ in group):
        raise GroupRefused("its dependency group changes the network output")
    for item in group.items:
        groups = grouped_conv_groups(item.dep.target.module)
        if groups > 1 and (channel_groups % groups or list(item.idxs) != list(item.root_idxs)):
            name = module_names(graph)[item.dep.target.module]
            raise GroupRefused(f"it reaches grouped conv {name!r} with shifted channel indices")
