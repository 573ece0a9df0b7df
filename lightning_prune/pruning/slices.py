"""Which parameter entries belong to which prunable unit (a filter, a neuron, an attention head).

A `ParamSlice` says: along dimension `dim` of parameter `param`, the entries at `positions` belong to the units
`units` (one unit per position). Every criterion that looks at a unit's parameters (L1, Taylor, the oracle) and
mask mode read these slices, so they all agree with what physical pruning removes.

Slices of a Torch-Pruning group are read from its items `(dependency, idxs)`: the handler's layer type says which
dimension of which parameter an index removes. Layer types without a rule here fall back to asking the handler
itself, one index at a time, on a tagged copy of the layer (slow but exact).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from lightning_prune.pruning.groups import module_names, parameter_names

_OPTYPE = tp.ops.OPTYPE
# Graph nodes that carry no parameters: nothing to slice.
_PARAMETER_FREE = {
    _OPTYPE.CONCAT,
    _OPTYPE.SPLIT,
    _OPTYPE.ELEMENTWISE,
    _OPTYPE.RESHAPE,
    _OPTYPE.UNBIND,
    _OPTYPE.EXPAND,
    _OPTYPE.SLICE,
    _OPTYPE.OUTPUT,
}


@dataclass(frozen=True)
class ParamSlice:
    """The entries of one parameter that belong to prunable units.

    Attributes:
        param: Parameter name relative to the network (`"layer1.0.conv2.weight"`).
        dim: Dimension the positions index, or None when they index the flattened parameter.
        positions: `[n]` long tensor of indices along `dim`.
        units: `[n]` long tensor, the unit that owns each position.
    """

    param: str
    dim: int | None
    positions: torch.Tensor
    units: torch.Tensor

    def per_unit_sum(self, values: torch.Tensor, num_units: int) -> torch.Tensor:
        """Sum `values` (shaped like the parameter) over each unit's entries.

        Args:
            values: Tensor of the parameter's shape.
            num_units: Number of units of the layer.

        Returns:
            `[num_units]` sums in float64 (units without entries here get 0).
        """
        values = values.detach().double()
        if self.dim is None:
            along = values.reshape(-1)
        else:
            other_dims = [d for d in range(values.dim()) if d != self.dim]
            along = values.sum(dim=other_dims) if other_dims else values
        out = torch.zeros(num_units, dtype=torch.float64, device=values.device)
        return out.index_add_(0, self.units.to(values.device), along[self.positions.to(values.device)])

    def entries_per_position(self, shape: torch.Size) -> int:
        """Number of parameter entries one position covers (the product of the other dimensions)."""
        if self.dim is None:
            return 1
        return int(torch.Size(shape).numel() // shape[self.dim])

    def zero_units(self, mask: torch.Tensor, units: torch.Tensor) -> None:
        """Set to 0, in place, the entries of `units` in `mask` (a tensor of the parameter's shape)."""
        chosen = self.positions[torch.isin(self.units, units.to(self.units.device))].to(mask.device)
        if chosen.numel() == 0:
            return
        if self.dim is None:
            mask.view(-1).index_fill_(0, chosen, 0)
        else:
            mask.index_fill_(self.dim, chosen, 0)


def _slice(param: str, dim: int | None, positions: list[int], units: list[int]) -> ParamSlice:
    as_long = torch.as_tensor
    return ParamSlice(param, dim, as_long(positions, dtype=torch.long), as_long(units, dtype=torch.long))


def _prefixed(module_name: str, local: str) -> str:
    return f"{module_name}.{local}" if module_name else local


def _module_rules(module: nn.Module, optype: object, is_out: bool, pruning_dim: int) -> list[tuple[str, int]] | None:
    """(local parameter name, dim) pairs an index removes on a layer, or None when no rule is known."""
    present = {name for name, p in module.named_parameters(recurse=False) if p is not None}

    def only_present(pairs: list[tuple[str, int]]) -> list[tuple[str, int]]:
        return [(name, dim) for name, dim in pairs if name in present]

    if optype == _OPTYPE.CONV:
        out_dim = 1 if module.transposed else 0
        if module.groups != 1 and (module.transposed or not is_out):
            return None
        if is_out:
            return only_present([("weight", out_dim), ("bias", 0)])
        return only_present([("weight", 1 - out_dim)])
    if optype == _OPTYPE.DEPTHWISE_CONV:
        return only_present([("weight", 0), ("bias", 0)])
    if optype == _OPTYPE.LINEAR:
        return only_present([("weight", 0), ("bias", 0)] if is_out else [("weight", 1)])
    if optype in (_OPTYPE.BN, _OPTYPE.GN, _OPTYPE.IN):
        return only_present([("weight", 0), ("bias", 0)])
    if optype == _OPTYPE.LN:
        return [(name, pruning_dim % getattr(module, name).dim()) for name in ("weight", "bias") if name in present]
    if optype == _OPTYPE.PRELU:
        return only_present([("weight", 0)]) if module.num_parameters > 1 else []
    if optype == _OPTYPE.EMBED:
        return only_present([("weight", 1)])
    return None


def _mha_slices(module_name: str, mha: nn.MultiheadAttention, idxs: list[int], units: list[int]) -> list[ParamSlice]:
    """Embedding-dim slices of `nn.MultiheadAttention`, mirroring Torch-Pruning's handler."""
    e = mha.embed_dim
    tripled = [i + k * e for k in range(3) for i in idxs]
    tripled_units = units * 3
    slices = [_slice(_prefixed(module_name, "out_proj.weight"), d, idxs, units) for d in (0, 1)]
    if mha.out_proj.bias is not None:
        slices.append(_slice(_prefixed(module_name, "out_proj.bias"), 0, idxs, units))
    if mha.in_proj_weight is not None:
        slices.append(_slice(_prefixed(module_name, "in_proj_weight"), 0, tripled, tripled_units))
        slices.append(_slice(_prefixed(module_name, "in_proj_weight"), 1, idxs, units))
    if mha.in_proj_bias is not None:
        slices.append(_slice(_prefixed(module_name, "in_proj_bias"), 0, tripled, tripled_units))
    for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
        if getattr(mha, name) is not None:
            slices.append(_slice(_prefixed(module_name, name), 0, idxs, units))
    for name in ("bias_k", "bias_v"):
        if getattr(mha, name) is not None:
            slices.append(_slice(_prefixed(module_name, name), 2, idxs, units))
    return slices


def _probe_slices(module_name: str, dep, idxs: list[int], units: list[int]) -> list[ParamSlice]:
    """Ask the handler which entries each index removes, on a copy whose entries hold their own flat index."""
    per_param: dict[str, tuple[list[int], list[int]]] = {}
    for idx, unit in zip(idxs, units, strict=True):
        probe = copy.deepcopy(dep.target.module).cpu().double()
        with torch.no_grad():
            for p in probe.parameters():
                p.copy_(torch.arange(p.numel(), dtype=torch.float64).view_as(p))
        dep.handler.__self__.pruning_dim = dep.target.pruning_dim
        dep.handler(probe, [idx])
        for name, original in dep.target.module.named_parameters():
            kept = dict(probe.named_parameters())[name].detach().reshape(-1).long()
            removed = torch.ones(original.numel(), dtype=torch.bool)
            removed[kept] = False
            positions, owners = per_param.setdefault(name, ([], []))
            found = removed.nonzero().flatten().tolist()
            positions.extend(found)
            owners.extend([unit] * len(found))
    return [
        _slice(_prefixed(module_name, name), None, positions, owners)
        for name, (positions, owners) in per_param.items()
        if positions
    ]


def _grouped_input_slice(module_name: str, conv: nn.Module, idxs: list[int], units: list[int]) -> ParamSlice:
    """Input channel `c` of a grouped conv is column `c % (in / groups)` of the rows of group `c // (in / groups)`.

    The weight is `[out, in / groups, *kernel]`; the entries are given as flat positions of the weight.
    """
    weight = conv.weight
    per_in, per_out = weight.shape[1], weight.shape[0] // conv.groups
    kernel = weight[0, 0].numel()
    offsets = torch.arange(kernel)
    positions, owners = [], []
    for channel, unit in zip(idxs, units, strict=True):
        group, column = divmod(channel, per_in)
        rows = torch.arange(group * per_out, (group + 1) * per_out)
        flat = ((rows[:, None] * per_in + column) * kernel + offsets[None, :]).reshape(-1)
        positions.append(flat)
        owners.append(torch.full_like(flat, unit))
    return ParamSlice(_prefixed(module_name, "weight"), None, torch.cat(positions), torch.cat(owners))


def group_slices(graph: tp.DependencyGraph, group) -> list[ParamSlice]:
    """Parameter slices of every unit of a Torch-Pruning group built with the full index range of its root.

    Args:
        graph: The dependency graph the group comes from.
        group: `graph.get_pruning_group(root, prune_out_channels, range(units))`.

    Returns:
        One `ParamSlice` per (parameter, dimension) the group touches; units are the root's indices.
    """
    slices: list[ParamSlice] = []
    modules, parameters = module_names(graph), parameter_names(graph)
    for item in group.items:
        dep, idxs, units = item.dep, [int(i) for i in item.idxs], [int(u) for u in item.root_idxs]
        target = dep.target
        if target.type in _PARAMETER_FREE or not idxs:
            continue
        if target.type == _OPTYPE.PARAMETER:
            name = parameters[target.module]
            slices.append(_slice(name, target.pruning_dim % target.module.dim(), idxs, units))
            continue
        module_name = modules[target.module]
        if target.type == _OPTYPE.MHA:
            slices.extend(_mha_slices(module_name, target.module, idxs, units))
            continue
        is_out = graph.is_out_channel_pruning_fn(dep.handler)
        if target.type == _OPTYPE.CONV and target.module.groups > 1 and not is_out and not target.module.transposed:
            slices.append(_grouped_input_slice(module_name, target.module, idxs, units))
            continue
        rules = _module_rules(target.module, target.type, is_out, target.pruning_dim)
        if rules is None:
            slices.extend(_probe_slices(module_name, dep, idxs, units))
            continue
        slices.extend(_slice(_prefixed(module_name, local), dim, idxs, units) for local, dim in rules)
    return slices


def masks_from_slices(
    parameters: dict[str, torch.Tensor], slices: list[ParamSlice], pruned_units: list[int]
) -> dict[str, torch.Tensor]:
    """0/1 masks (1 = kept) of the parameters that `pruned_units` of one layer touch.

    Args:
        parameters: `dict(network.named_parameters())`.
        slices: The layer's slices.
        pruned_units: Units to zero.

    Returns:
        `{param_name: mask}` with each mask shaped, typed and placed like its parameter; only touched parameters.
    """
    units = torch.as_tensor(pruned_units, dtype=torch.long)
    masks: dict[str, torch.Tensor] = {}
    for piece in slices:
        param = parameters[piece.param]
        mask = masks.setdefault(piece.param, torch.ones_like(param, requires_grad=False))
        piece.zero_units(mask, units)
    return masks
