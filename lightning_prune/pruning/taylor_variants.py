"""LLM-Pruner's Taylor importances (`hf_prune.py --taylor vectorize|param_first|param_second|param_mix`).

With `g` the gradient of the mean calibration loss and `F` the diagonal Fisher (the per-example squared gradient,
averaged over the calibration examples), a unit's score sums over the weights of its whole group (gate/up rows and
down columns of an MLP channel; q/k/v rows and o_proj columns of a head) of:

- `vectorize` (vector-wise): `|sum over a row/column of w * g|` for each of the unit's rows/columns;
- `param_first` (element-wise, first order): `|w * g|` for each weight;
- `param_second` (element-wise, second order, diagonal Fisher): `|w * F * w|`;
- `param_mix`: `|w * g - 0.5 * w * F * w|`.

Biases are left out, as LLM-Pruner scores `layer.weight` only (LLaMA has none). The `group` variant of
`importance.taylor_scores` (Molchanov et al.) squares per batch instead. Under torch.distributed `g` and `F` are
summed over all ranks before scoring (the variants are not additive over ranks).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_prune.pruning.calibration import Batch, LossFn, require_batches
from lightning_prune.pruning.distributed import sum_across_ranks
from lightning_prune.pruning.inputs import call_network
from lightning_prune.pruning.modes import modes_restored
from lightning_prune.pruning.slices import ParamSlice
from lightning_prune.pruning.structure import PruningStructure

LLM_PRUNER_VARIANTS = ("vectorize", "param_first", "param_second", "param_mix")


def _examples(inputs, targets):
    """Batches of one example: `inputs[i:i+1]` (or each tensor of a dict), `targets[i:i+1]`."""
    count = len(targets)
    for i in range(count):
        one = {k: v[i:i + 1] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()} \
            if isinstance(inputs, dict) else inputs[i:i + 1]
        yield one, targets[i:i + 1]


def _backward(network, parameters, inputs, targets, loss_fn) -> None:
    for p in parameters.values():
        p.grad = None
    with torch.inference_mode(False), torch.enable_grad():
        loss_fn(call_network(network, inputs), targets).backward()


def gradient_statistics(structure: PruningStructure, names: set[str], batches: Sequence[Batch], loss_fn: LossFn,
                        fisher: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """`(g, F)` of the named parameters: the mean over batches of each batch-mean loss's gradient, and (with
    `fisher`) the mean over every example of its own loss's squared gradient. Existing `.grad`s are put back."""
    network = structure.network
    parameters = dict(network.named_parameters())
    saved = {name: p.grad for name, p in parameters.items()}
    grads = {name: torch.zeros_like(parameters[name], dtype=torch.float64) for name in names}
    squares = {name: torch.zeros_like(parameters[name], dtype=torch.float64) for name in names} if fisher else {}
    counts = torch.zeros(2, dtype=torch.float64)  # batches, examples
    try:
        with modes_restored(network):
            for inputs, targets in batches:
                _backward(network, parameters, inputs, targets, loss_fn)
                for name in names:
                    if parameters[name].grad is not None:
                        grads[name] += parameters[name].grad.double()
                counts[0] += 1
                if not fisher:
                    continue
                for one, target in _examples(inputs, targets):
                    _backward(network, parameters, one, target, loss_fn)
                    for name in names:
                        if parameters[name].grad is not None:
                            squares[name] += parameters[name].grad.double().square()
                    counts[1] += 1
    finally:
        for name, p in parameters.items():
            p.grad = saved[name]
    counts = sum_across_ranks(counts)
    grads = {name: sum_across_ranks(g) / counts[0] for name, g in grads.items()}
    squares = {name: sum_across_ranks(s) / counts[1] for name, s in squares.items()}
    return grads, squares


def _vector_sums(piece: ParamSlice, values: torch.Tensor, units: int) -> torch.Tensor:
    """Per unit: the sum over its positions of `|sum over the other dimensions of values|` (one row/column)."""
    if piece.dim is None:
        along = values.reshape(-1)
    else:
        others = [d for d in range(values.dim()) if d != piece.dim]
        along = values.sum(dim=others) if others else values
    out = torch.zeros(units, dtype=torch.float64, device=values.device)
    return out.index_add_(0, piece.units.to(values.device), along[piece.positions.to(values.device)].abs())


def llm_pruner_taylor_scores(structure: PruningStructure, layers: Sequence[str], batches: Sequence[Batch],
                             loss_fn: LossFn, variant: str) -> dict[str, torch.Tensor]:
    """LLM-Pruner's Taylor importance of each unit (see the module docstring), `{layer: [units] float64}`.

    Raises:
        ValueError: If `variant` is not one of `LLM_PRUNER_VARIANTS`, or `batches` is empty.
    """
    if variant not in LLM_PRUNER_VARIANTS:
        raise ValueError(f"`taylor_variant` must be one of {list(LLM_PRUNER_VARIANTS)}, got {variant!r}.")
    require_batches(batches, "taylor")
    pieces = {name: [p for p in structure.slices(name) if p.param.endswith("weight")] for name in layers}
    names = {piece.param for group in pieces.values() for piece in group}
    grads, fisher = gradient_statistics(structure, names, batches, loss_fn, variant in ("param_second", "param_mix"))
    parameters = dict(structure.network.named_parameters())
    scores = {}
    for layer in layers:
        units = structure.layers[layer].units
        total = torch.zeros(units, dtype=torch.float64)
        for piece in pieces[layer]:
            w = parameters[piece.param].detach().double()
            first = w * grads[piece.param]
            if variant == "vectorize":
                total += _vector_sums(piece, first, units).cpu()
                continue
            second = w * fisher[piece.param] * w if variant != "param_first" else None
            salience = {"param_first": first, "param_second": second}.get(variant)
            if salience is None:
                salience = first - 0.5 * second
            total += piece.per_unit_sum(salience.abs(), units).cpu()
        scores[layer] = total
    return scores
