"""The loss-delta oracle: a unit's score is how much the loss rises when that unit alone is removed.

Removing a unit is done by masking its whole dependency group (exactly equivalent to physical removal for
conv/linear channel groups and attention heads; see `structure.py`), never by rebuilding the network. Ablations of
one layer are batched with `torch.func.vmap` over stacked masked copies of only the parameters the layer's group
touches: the forward pass up to the layer runs once per chunk, unbatched, and only the rest runs `chunk_size` times.
Scoring `N` units therefore costs at most `N + 1` evaluations of the calibration batches, and less when the layers
are deep in the network. If `vmap` cannot run the network, ablations fall back to one masked pass each.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from lightning_prune.pruning.calibration import Batch, LossFn, require_batches
from lightning_prune.pruning.distributed import sum_across_ranks
from lightning_prune.pruning.inputs import call_network
from lightning_prune.pruning.modes import modes_restored
from lightning_prune.pruning.slices import ParamSlice
from lightning_prune.pruning.structure import PruningStructure


def _ablated_parameters(
    parameters: dict[str, torch.Tensor], slices: list[ParamSlice], units: list[int]
) -> dict[str, torch.Tensor]:
    """`{param: [K, *shape]}`: copy k of each touched parameter has unit `units[k]` zeroed."""
    stacked = {}
    for name in {piece.param for piece in slices}:
        param = parameters[name].detach()
        masks = torch.ones((len(units), *param.shape), dtype=param.dtype, device=param.device)
        for k, unit in enumerate(units):
            for piece in slices:
                if piece.param == name:
                    piece.zero_units(masks[k], torch.tensor([unit]))
        stacked[name] = param.unsqueeze(0) * masks
    return stacked


def _main_output(output):
    """The tensor output: a transformers model output also holds its KV cache, which neither vmap nor stack takes."""
    return getattr(output, "logits", output)


def _vmapped_outputs(network: nn.Module, stacked: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
    """Outputs `[K, B, ...]` of the network under each of the K parameter variants, in one batched pass."""

    def run(variant: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        args, kwargs = ((), x) if isinstance(x, dict) else ((x,), None)  # dict inputs are keyword arguments
        return _main_output(functional_call(network, variant, args, kwargs))

    return vmap(run, in_dims=(0, None))(stacked, inputs)


def _looped_outputs(network: nn.Module, stacked: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
    """Same as `_vmapped_outputs`, one masked forward pass per variant (parameters restored afterwards)."""
    parameters = dict(network.named_parameters())
    originals = {name: parameters[name].detach().clone() for name in stacked}
    outputs = []
    try:
        for k in range(next(iter(stacked.values())).shape[0]):
            for name, variants in stacked.items():
                parameters[name].data.copy_(variants[k])
            outputs.append(_main_output(call_network(network, inputs)))
    finally:
        for name, original in originals.items():
            parameters[name].data.copy_(original)
    return torch.stack(outputs)


def oracle_scores(
    structure: PruningStructure,
    layers: Sequence[str],
    batches: Sequence[Batch],
    loss_fn: LossFn = F.cross_entropy,
    chunk_size: int = 16,
    batched: bool = True,
) -> dict[str, torch.Tensor]:
    """Loss increase when each unit alone is removed, over the calibration batches (network in eval mode).

    The loss over the batches is the sample-weighted mean of `loss_fn` per batch; the score of unit `u` is
    `loss(without u) - loss(network)`, so a unit whose removal changes nothing scores 0 and higher = keep.
    Under torch.distributed every rank must call it: the losses are sample-weighted over all ranks' batches.

    Args:
        structure: The network's structure.
        layers: Layer names.
        batches: `(inputs, targets)` batches on the network's device.
        loss_fn: `loss_fn(outputs, targets) -> scalar` (a batch mean).
        chunk_size: Ablations evaluated together in one batched pass (memory grows with it).
        batched: Use `vmap`; False evaluates one ablation per pass (same numbers, slower).

    Returns:
        `{layer: [units] float64 scores}`.

    Raises:
        ValueError: If `batches` is empty or `chunk_size` is below 1.
    """
    require_batches(batches, "oracle")
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be at least 1, got {chunk_size}.")
    network = structure.network
    parameters = dict(network.named_parameters())
    forward: Callable = _vmapped_outputs if batched else _looped_outputs
    summed: dict[str, torch.Tensor] = {}  # sample-weighted loss sums of each ablation, this rank's batches
    with modes_restored(network), torch.no_grad(), warnings.catch_warnings():
        # nn.MultiheadAttention's fused eval kernel has no vmap rule; vmap's slower fallback is still right.
        warnings.filterwarnings("ignore", message="There is a performance drop")
        base = sum(float(loss_fn(call_network(network, x), y)) * len(y) for x, y in batches)
        for name in layers:
            units = structure.layers[name].units
            slices = structure.slices(name)
            losses = torch.zeros(units, dtype=torch.float64)
            for start in range(0, units, chunk_size):
                chunk = list(range(start, min(units, start + chunk_size)))
                stacked = _ablated_parameters(parameters, slices, chunk)
                for x, y in batches:
                    try:
                        outputs = forward(network, stacked, x)
                    except (RuntimeError, NotImplementedError) as error:
                        if forward is _looped_outputs:
                            raise
                        warnings.warn(f"vmap cannot run this network ({error}); ablating one unit per pass.",
                                      stacklevel=2)
                        forward = _looped_outputs
                        outputs = forward(network, stacked, x)
                    for k, unit in enumerate(chunk):
                        losses[unit] += float(loss_fn(outputs[k], y)) * len(y)
            summed[name] = losses
    # One collective for everything: [ablation sums of every layer..., base sum, sample count].
    samples = float(sum(len(targets) for _, targets in batches))
    flat = sum_across_ranks(torch.cat([*summed.values(), torch.tensor([base, samples], dtype=torch.float64)]))
    total, base_mean = flat[-1], flat[-2] / flat[-1]
    pieces = flat[:-2].split([len(summed[name]) for name in summed])
    return {name: piece / total - base_mean for name, piece in zip(summed, pieces, strict=True)}
