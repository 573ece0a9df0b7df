"""Structured pruning units of Hugging Face decoder LMs (Llama, Qwen2/2.5/3, Mistral, and the LM of a LLaVA).

Three unit kinds, named after module names so layer patterns read as usual (`model.layers.*.mlp: 0.3`):

- `<...>.mlp` (`channels`): intermediate channels of a gated MLP (`gate_proj`, `up_proj`, `down_proj`). Channel `c`
  is row `c` of gate and up and column `c` of down. The group comes from Torch-Pruning's dependency graph, which
  traces these blocks (silu(gate) * up -> down) and prunes them physically; where the model does not trace on
  the example input, the same explicit rule does (`mlp_slices`, `prune_mlp_channels`; a test checks they agree).
- `<...>.self_attn` (`heads`): query heads. With grouped-query attention (`G = heads / kv_heads > 1`) the same
  number of query heads must go from every KV group, so `repeat_kv` still pairs query head `j` with KV head
  `j // G'`; pruned counts are multiples of `kv_heads`. Without GQA (`G = 1`) a head goes with its own k and v.
- `<...>.self_attn.kv_groups` (`kv_groups`): whole KV groups: k and v of the group and all its query heads.

Torch-Pruning cannot prune GQA heads (it prunes the head dimension, or breaks `num_key_value_heads`), so heads
follow an explicit rule here, as `attention.py` does for `nn.MultiheadAttention`: a head is its q rows (and
bias) and its o_proj columns; mask mode zeros them, which removes the head's output exactly; physical mode
rebuilds the four projections with the kept rows/columns and sets `num_key_value_groups`.

The replay record names the removed units (`decoder_mlp`, `decoder_heads`) and is replayed by the explicit rules,
so restoring a checkpoint needs no example input (a multimodal batch is not stored in the record).
"""

from __future__ import annotations

import warnings

import torch
import torch_pruning as tp
from torch import nn

from lightning_prune.pruning.choice import lowest_units
from lightning_prune.pruning.slices import ParamSlice, group_slices
from lightning_prune.pruning.structure import PrunableLayer, PruningStructure
from lightning_prune.pruning.tracing import build_dependency_graph

KV_SUFFIX = ".kv_groups"


def is_gated_mlp(module: nn.Module) -> bool:
    """Whether `module` is a gated MLP block with `gate_proj`, `up_proj` and `down_proj` linears."""
    return all(isinstance(getattr(module, name, None), nn.Linear) for name in ("gate_proj", "up_proj", "down_proj"))


def is_decoder_attention(module: nn.Module) -> bool:
    """Whether `module` is a transformers decoder attention (`q/k/v/o_proj`, `head_dim`, `num_key_value_groups`)."""
    names = ("q_proj", "k_proj", "v_proj", "o_proj")
    projections = all(isinstance(getattr(module, name, None), nn.Linear) for name in names)
    has_sizes = isinstance(getattr(module, "head_dim", None), int) and hasattr(module, "num_key_value_groups")
    return projections and has_sizes


def head_counts(attention: nn.Module) -> tuple[int, int]:
    """`(query heads, KV heads)` of a decoder attention, read from its current projection shapes."""
    return attention.q_proj.out_features // attention.head_dim, attention.k_proj.out_features // attention.head_dim


def decoder_units(network: nn.Module) -> dict[str, PrunableLayer]:
    """Every prunable unit set of the decoder layers in `network`, in module order."""
    layers: dict[str, PrunableLayer] = {}
    for name, module in network.named_modules():
        if is_gated_mlp(module) and module.gate_proj.out_features > 1:
            layers[name] = PrunableLayer(name, "channels", module.gate_proj.out_features)
        elif is_decoder_attention(module):
            heads, kv_heads = head_counts(module)
            if heads > 1:
                layers[name] = PrunableLayer(name, "heads", heads)
            if kv_heads > 1 and kv_heads < heads:
                layers[name + KV_SUFFIX] = PrunableLayer(name + KV_SUFFIX, "kv_groups", kv_heads)
    return layers


def has_decoder_units(network: nn.Module) -> bool:
    """Whether `network` holds a gated MLP or a decoder attention (then `DecoderStructure` prunes it)."""
    return any(is_gated_mlp(m) or is_decoder_attention(m) for m in network.modules())


def valid_head_ratios(heads: int, kv_heads: int) -> list[float]:
    """Ratios of query heads that keep GQA groups equal: `m * kv_heads / heads` for `m < heads / kv_heads`."""
    return [round(m * kv_heads / heads, 4) for m in range(heads // kv_heads)]


def _attention_of(name: str) -> str:
    return name.removesuffix(KV_SUFFIX)


def _as_long(values: list[int]) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.long)


def head_slices(name: str, attention: nn.Module, kind: str) -> list[ParamSlice]:
    """Parameter slices of every query head (`heads`) or KV group (`kv_groups`) of a decoder attention.

    Args:
        name: Module name of the attention in the network.
        attention: A module for which `is_decoder_attention` holds.
        kind: `"heads"` or `"kv_groups"`.

    Returns:
        Slices of q/k/v rows (weight dim 0 and bias) and o_proj columns (dim 1); units are head or group indices.
    """
    heads, kv_heads = head_counts(attention)
    d, group = attention.head_dim, heads // kv_heads
    q_rows = list(range(heads * d))
    kv_rows = list(range(kv_heads * d))
    if kind == "heads":
        q_owner = [r // d for r in q_rows]
        kv_owner = [r // d for r in kv_rows] if group == 1 else None  # MHA: a head owns its k and v
    else:
        q_owner = [r // d // group for r in q_rows]
        kv_owner = [r // d for r in kv_rows]
    slices = []
    owners = (("q_proj", q_rows, q_owner), ("k_proj", kv_rows, kv_owner), ("v_proj", kv_rows, kv_owner))
    for proj, rows, owner in owners:
        if owner is None:
            continue
        linear = getattr(attention, proj)
        slices.append(ParamSlice(f"{name}.{proj}.weight", 0, _as_long(rows), _as_long(owner)))
        if linear.bias is not None:
            slices.append(ParamSlice(f"{name}.{proj}.bias", 0, _as_long(rows), _as_long(owner)))
    slices.append(ParamSlice(f"{name}.o_proj.weight", 1, _as_long(q_rows), _as_long(q_owner)))
    return slices


def mlp_slices(name: str, mlp: nn.Module) -> list[ParamSlice]:
    """Parameter slices of every intermediate channel of a gated MLP: gate/up rows (and biases), down columns."""
    channels = _as_long(list(range(mlp.gate_proj.out_features)))
    slices = []
    for proj in ("gate_proj", "up_proj"):
        slices.append(ParamSlice(f"{name}.{proj}.weight", 0, channels, channels))
        if getattr(mlp, proj).bias is not None:
            slices.append(ParamSlice(f"{name}.{proj}.bias", 0, channels, channels))
    slices.append(ParamSlice(f"{name}.down_proj.weight", 1, channels, channels))
    return slices


def prune_mlp_channels(mlp: nn.Module, channels: list[int]) -> None:
    """Remove intermediate channels of a gated MLP in place (gate/up rows, down columns)."""
    gone = set(channels)
    kept = [c for c in range(mlp.gate_proj.out_features) if c not in gone]
    mlp.gate_proj = _kept_linear(mlp.gate_proj, rows=kept)
    mlp.up_proj = _kept_linear(mlp.up_proj, rows=kept)
    mlp.down_proj = _kept_linear(mlp.down_proj, columns=kept)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = len(kept)


def _kept_linear(linear: nn.Linear, rows: list[int] | None = None, columns: list[int] | None = None) -> nn.Linear:
    """A new linear holding only the given output rows / input columns of `linear` (same device and dtype)."""
    weight = linear.weight.detach()
    if rows is not None:
        weight = weight[torch.as_tensor(rows, device=weight.device)]
    if columns is not None:
        weight = weight[:, torch.as_tensor(columns, device=weight.device)]
    kept = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None)
    kept = kept.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        kept.weight.copy_(weight)
        if linear.bias is not None:
            bias = linear.bias.detach()
            kept.bias.copy_(bias if rows is None else bias[torch.as_tensor(rows, device=bias.device)])
    kept.weight.requires_grad_(linear.weight.requires_grad)
    return kept.train(linear.training)


def prune_attention_heads(attention: nn.Module, query_heads: list[int], kv_groups: list[int]) -> None:
    """Remove query heads and whole KV groups of a decoder attention in place.

    Args:
        attention: A module for which `is_decoder_attention` holds.
        query_heads: Query heads to remove (without GQA their k and v go too).
        kv_groups: KV groups to remove with all their query heads.

    Raises:
        ValueError: If the kept KV groups would hold different numbers of query heads, or nothing stays.
    """
    heads, kv_heads = head_counts(attention)
    d, group = attention.head_dim, heads // kv_heads
    gone_kv = set(kv_groups) | (set(query_heads) if group == 1 else set())
    gone_q = set(query_heads) | {h for h in range(heads) if h // group in gone_kv}
    kept_kv = [g for g in range(kv_heads) if g not in gone_kv]
    kept_q = [h for h in range(heads) if h not in gone_q]
    per_group = {g: sum(1 for h in kept_q if h // group == g) for g in kept_kv}
    if not kept_q or len(set(per_group.values())) != 1:
        raise ValueError(
            f"`indices` must leave every kept KV group the same number (>= 1) of query heads, got {per_group} "
            f"(query heads per kept group)."
        )
    q_rows = [h * d + j for h in kept_q for j in range(d)]
    kv_rows = [g * d + j for g in kept_kv for j in range(d)]
    attention.q_proj = _kept_linear(attention.q_proj, rows=q_rows)
    attention.k_proj = _kept_linear(attention.k_proj, rows=kv_rows)
    attention.v_proj = _kept_linear(attention.v_proj, rows=kv_rows)
    attention.o_proj = _kept_linear(attention.o_proj, columns=q_rows)
    attention.num_key_value_groups = len(kept_q) // len(kept_kv)
    for attribute, value in (("num_heads", len(kept_q)), ("num_key_value_heads", len(kept_kv))):
        if hasattr(attention, attribute):
            setattr(attention, attribute, value)


def replay_decoder(network: nn.Module, record: dict) -> None:
    """Redo the `decoder_mlp` and `decoder_heads` parts of a `DecoderStructure.prune` record on `network`."""
    for name, channels in record.get("decoder_mlp", {}).items():
        prune_mlp_channels(network.get_submodule(name), list(channels))
    for name, removed in record.get("decoder_heads", {}).items():
        prune_attention_heads(network.get_submodule(name), list(removed["heads"]), list(removed["kv_groups"]))


class DecoderStructure(PruningStructure):
    """The prunable units of a transformers decoder LM: MLP channels, query heads and KV groups.

    Same interface as `PruningStructure` (select, pruned_counts, check_indices, slices, parameter_masks, prune),
    so every criterion, mask mode and the Pruning callback work unchanged.

    Args:
        network: The model (not a copy: `prune` changes it), e.g. a `LlamaForCausalLM`.
        example_input: Token ids `[1, T]` (or a dict of keyword inputs) the model accepts, to trace the MLP groups
            with Torch-Pruning; None, or a model that does not trace, uses the explicit MLP rule.
    """

    def __init__(self, network: nn.Module, example_input: torch.Tensor | dict | None) -> None:
        self.network = network
        self.example_input = example_input
        self.graph = self._trace(network, example_input)
        self.layers = decoder_units(network)
        self._groups = {}
        for name, layer in self.layers.items():
            if layer.kind == "channels" and self.graph is not None:
                gate = network.get_submodule(name).gate_proj
                self._groups[name] = self.graph.get_pruning_group(
                    gate, tp.prune_linear_out_channels, list(range(layer.units))
                )
        self._slices: dict[str, list[ParamSlice]] = {}
        self._coupled: dict[str, list[str]] = {}
        self._pruned = False

    @staticmethod
    def _trace(network: nn.Module, example_input) -> object | None:
        if example_input is None:
            return None
        try:
            return build_dependency_graph(network, example_input)[0]
        except (RuntimeError, TypeError, ValueError, AttributeError, IndexError, KeyError) as error:
            warnings.warn(f"Torch-Pruning cannot trace {type(network).__name__} ({error}); MLP channels follow the "
                          "explicit gate/up/down rule.", stacklevel=3)
            return None

    def _merge_coupled(self, ordered: dict[str, float]) -> dict[str, float]:
        both = [n for n in ordered if n.endswith(KV_SUFFIX) and _attention_of(n) in ordered]
        if both:
            raise ValueError(
                f"`layers` must select either the query heads or the KV groups of an attention, got both for "
                f"{_attention_of(both[0])!r} (patterns matched {both[0]!r} too); choose one."
            )
        self._coupled = {name: [name] for name in ordered}
        return ordered

    def _group_problem(self, name: str, count: int) -> str | None:
        layer = self.layers[name]
        if layer.kind != "heads":
            return None
        heads, kv_heads = head_counts(self.network.get_submodule(name))
        if heads // kv_heads == 1 or count % kv_heads == 0:
            return None
        return (
            f"must prune the same number of query heads from each of the {kv_heads} KV groups of {name!r} (a "
            f"multiple of {kv_heads} of its {heads} heads), got {count}; valid ratios: "
            f"{valid_head_ratios(heads, kv_heads)}, or prune whole groups with {name + KV_SUFFIX!r}."
        )

    def pruned_counts(self, ratios: dict[str, float]) -> dict[str, int]:
        """`{layer: units to prune}`; raises when a ratio breaks GQA groups (the message names the valid ratios)."""
        counts = super().pruned_counts(ratios)
        for name, count in counts.items():
            problem = self._group_problem(name, count)
            if problem:
                raise ValueError(f"`layers` ratio {ratios[name]} for {name!r} {problem}")
        return counts

    def check_indices(self, indices: dict[str, list[int]]) -> dict[str, list[int]]:
        """Validate explicit indices; query heads must leave every KV group the same number of heads."""
        checked = super().check_indices(indices)
        for name, idxs in checked.items():
            problem = self._group_problem(name, len(idxs))
            if problem:
                raise ValueError(f"`indices[{name!r}]` {problem}")
            if self.layers[name].kind == "heads":
                heads, kv_heads = head_counts(self.network.get_submodule(name))
                group = heads // kv_heads
                per_group = [sum(1 for i in idxs if i // group == g) for g in range(kv_heads)]
                if group > 1 and len(set(per_group)) != 1:
                    raise ValueError(
                        f"`indices[{name!r}]` must take the same number of query heads from each KV group "
                        f"(heads {group}g..{group}g+{group - 1} form group g), got {per_group} per group."
                    )
        return checked

    def choose_units(
        self, scores: dict[str, torch.Tensor], counts: dict[str, int], global_ranking: bool = False
    ) -> dict[str, list[int]]:
        """The lowest-scored units; query heads per KV group (equal numbers), channels per layer or globally.

        Global ranking spans MLP channel layers only (heads have no common scale across layers).
        """
        channels = {name: c for name, c in counts.items() if self.layers[name].kind != "heads"}
        chosen = lowest_units(scores, channels, global_ranking)
        for name, count in counts.items():
            if self.layers[name].kind != "heads":
                continue
            heads, kv_heads = head_counts(self.network.get_submodule(name))
            group = heads // kv_heads
            if group == 1:
                chosen[name] = lowest_units({name: scores[name]}, {name: count})[name]
                continue
            picked = []
            for g in range(kv_heads):
                members = scores[name][g * group:(g + 1) * group]
                order = torch.sort(members, stable=True).indices[: count // kv_heads]
                picked.extend(int(g * group + i) for i in order)
            chosen[name] = sorted(picked)
        return {name: chosen[name] for name in counts}

    def mask_is_exact(self, name: str) -> bool:
        """Always: a zeroed channel's silu(0) * 0 and a head's zeroed o_proj columns contribute exactly nothing."""
        return True

    def slices(self, name: str) -> list[ParamSlice]:
        """Every parameter entry of each unit: MLP group from Torch-Pruning, head rows/columns from the rule."""
        if name not in self._slices:
            layer = self.layers[name]
            if layer.kind == "channels" and self.graph is not None:
                self._slices[name] = group_slices(self.graph, self._groups[name])
            elif layer.kind == "channels":
                self._slices[name] = mlp_slices(name, self.network.get_submodule(name))
            else:
                attention = _attention_of(name)
                self._slices[name] = head_slices(attention, self.network.get_submodule(attention), layer.kind)
        return self._slices[name]

    def root_slices(self, name: str) -> list[ParamSlice]:
        """A unit's own weights: gate/up rows and the down column; a head's q (k, v) rows and o_proj columns."""
        return [piece for piece in self.slices(name) if piece.param.endswith(".weight")]

    def prune(self, indices: dict[str, list[int]]) -> dict:
        """Remove the units physically: MLP channels through Torch-Pruning, heads and groups by the explicit rule.

        Returns:
            The replay record: `{"history": [], "heads": {}, "decoder_mlp": {mlp: [channels]}, "decoder_heads":
            {attention: {"heads": [...], "kv_groups": [...]}}}`, plain types (replayed by `replay_decoder`).
        """
        if self._pruned:
            raise RuntimeError("this PruningStructure has already pruned its network; build a new one.")
        self._pruned = True
        mlp: dict[str, list[int]] = {}
        attention: dict[str, dict[str, list[int]]] = {}
        for name, idxs in indices.items():
            if not idxs:
                continue
            kind, chosen = self.layers[name].kind, sorted(int(i) for i in idxs)
            if kind == "channels":
                mlp[name] = chosen
                if self.graph is not None:
                    gate = self.network.get_submodule(name).gate_proj
                    self.graph.get_pruning_group(gate, tp.prune_linear_out_channels, chosen).prune()
                else:
                    prune_mlp_channels(self.network.get_submodule(name), chosen)
                continue
            entry = attention.setdefault(_attention_of(name), {"heads": [], "kv_groups": []})
            entry["heads" if kind == "heads" else "kv_groups"] = chosen
        replay_decoder(self.network, {"decoder_heads": attention})
        return {"history": [], "heads": {}, "decoder_mlp": mlp, "decoder_heads": attention}
