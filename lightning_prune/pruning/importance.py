"""Pruning criteria: a score per unit of each selected layer (higher = keep), and the choice of the units to prune.

Each criterion is a pure function over a `PruningStructure` plus a thin class behind one interface
(`Criterion.scores(structure, layers, batches, loss_fn) -> {layer: [units] scores}`), chosen by name through
`build_criterion`. A unit is a filter / output channel (with its whole dependency group) or an attention head.

- `l1`: L1 norm of the layer's own filter weights (Li et al., 2017), summed or averaged within the filter.
- `taylor`: first-order Taylor (Molchanov et al., 2019): `sum_batches (sum_{group params} g * w)^2` (variant
  `group`), or LLM-Pruner's `vectorize`, `param_first`, `param_second`, `param_mix` (`taylor_variants.py`).
- `oracle`: the increase of the loss when the unit alone is removed (`oracle.py`).
- `random`: seeded uniform scores.
- `explicit`: the user's indices score 0, the rest 1.

Data-driven criteria run with the network in eval mode (BatchNorm uses its running statistics, dropout is off),
so scoring neither updates BatchNorm statistics nor depends on dropout draws; the flags are restored afterwards.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F

from lightning_prune.pruning.calibration import Batch, LossFn, require_batches
from lightning_prune.pruning.choice import lowest_units as lowest_units  # re-exported; the choice is `choice.py`'s
from lightning_prune.pruning.distributed import sum_across_ranks
from lightning_prune.pruning.inputs import call_network
from lightning_prune.pruning.modes import modes_restored
from lightning_prune.pruning.oracle import oracle_scores
from lightning_prune.pruning.structure import PruningStructure
from lightning_prune.pruning.taylor_variants import LLM_PRUNER_VARIANTS, llm_pruner_taylor_scores

TAYLOR_VARIANTS = ("group", *LLM_PRUNER_VARIANTS)


def l1_scores(
    structure: PruningStructure, layers: Sequence[str], reduction: str = "sum"
) -> dict[str, torch.Tensor]:
    """L1 norm of each unit's own weights: a conv filter `W[c]`, a linear row, a head's q/k/v rows.

    Args:
        structure: The network's structure.
        layers: Layer names.
        reduction: `"sum"` (the norm) or `"mean"` (the norm divided by the number of weights of the unit).

    Returns:
        `{layer: [units] float64 scores}`.

    Raises:
        ValueError: If `reduction` is neither `"sum"` nor `"mean"`.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"`l1_reduction` must be one of ['sum', 'mean'], got {reduction!r}.")
    parameters = dict(structure.network.named_parameters())
    scores = {}
    for name in layers:
        units = structure.layers[name].units
        total = torch.zeros(units, dtype=torch.float64)
        count = torch.zeros(units, dtype=torch.float64)
        for piece in structure.root_slices(name):
            weight = parameters[piece.param]
            total += piece.per_unit_sum(weight.abs(), units).cpu()
            count += piece.per_unit_sum(torch.ones_like(weight), units).cpu()
        scores[name] = total / count if reduction == "mean" else total
    return scores


def taylor_scores(
    structure: PruningStructure, layers: Sequence[str], batches: Sequence[Batch], loss_fn: LossFn = F.cross_entropy
) -> dict[str, torch.Tensor]:
    """First-order Taylor importance of each unit's whole group, accumulated over calibration batches.

    For every batch `b`, `score_u += (sum over the unit's group entries of g_b * w)^2`, where `g_b` is the gradient
    of the batch's mean loss (own backward passes, network in eval mode). Existing `.grad` values are put back.
    Under torch.distributed every rank must call it: the sums run over all ranks' batches (`sum_across_ranks`).

    Args:
        structure: The network's structure.
        layers: Layer names.
        batches: `(inputs, targets)` batches on the network's device.
        loss_fn: `loss_fn(outputs, targets) -> scalar`.

    Returns:
        `{layer: [units] float64 scores}`.

    Raises:
        ValueError: If `batches` is empty.
    """
    require_batches(batches, "taylor")
    network = structure.network
    parameters = dict(network.named_parameters())
    saved_grads = {name: p.grad for name, p in parameters.items()}
    scores = {name: torch.zeros(structure.layers[name].units, dtype=torch.float64) for name in layers}
    try:
        with modes_restored(network):
            for inputs, targets in batches:
                for p in parameters.values():
                    p.grad = None
                with torch.inference_mode(False), torch.enable_grad():
                    loss_fn(call_network(network, inputs), targets).backward()
                for name in layers:
                    units = structure.layers[name].units
                    batch_score = torch.zeros(units, dtype=torch.float64)
                    for piece in structure.slices(name):
                        p = parameters[piece.param]
                        if p.grad is not None:
                            batch_score += piece.per_unit_sum(p.grad * p, units).cpu()
                    scores[name] += batch_score.square()
    finally:
        for name, p in parameters.items():
            p.grad = saved_grads[name]
    return _summed_across_ranks(scores)


def _summed_across_ranks(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-layer scores summed over all ranks in one collective (unchanged in a single process)."""
    names = list(scores)
    total = sum_across_ranks(torch.cat([scores[name] for name in names] or [torch.zeros(0, dtype=torch.float64)]))
    return dict(zip(names, total.split([len(scores[name]) for name in names]), strict=True))


def random_scores(structure: PruningStructure, layers: Sequence[str], seed: int = 0) -> dict[str, torch.Tensor]:
    """Uniform random scores from a generator seeded once with `seed` (layers drawn in the given order)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.rand(structure.layers[name].units, generator=generator, dtype=torch.float64) for name in layers
    }


def explicit_scores(
    structure: PruningStructure, layers: Sequence[str], indices: dict[str, list[int]]
) -> dict[str, torch.Tensor]:
    """Score 0 for the given indices and 1 for the others, so the lowest scores are exactly the given units."""
    scores = {}
    for name in layers:
        score = torch.ones(structure.layers[name].units, dtype=torch.float64)
        score[torch.as_tensor(indices.get(name, []), dtype=torch.long)] = 0.0
        scores[name] = score
    return scores


class Criterion(ABC):
    """Scores the units of selected layers; higher = more important = kept."""

    name: ClassVar[str]
    needs_data: ClassVar[bool] = False

    @abstractmethod
    def scores(
        self,
        structure: PruningStructure,
        layers: Sequence[str],
        batches: Sequence[Batch] = (),
        loss_fn: LossFn = F.cross_entropy,
    ) -> dict[str, torch.Tensor]:
        """`{layer: [units] scores}` for `layers` of `structure` (data criteria read `batches` and `loss_fn`)."""


class L1Criterion(Criterion):
    """`l1`: filter L1 norm. Args: reduction: `"sum"` or `"mean"` within the filter."""

    name = "l1"

    def __init__(self, reduction: str = "sum") -> None:
        self.reduction = reduction

    def scores(self, structure, layers, batches=(), loss_fn=F.cross_entropy):
        return l1_scores(structure, layers, self.reduction)


class TaylorCriterion(Criterion):
    """`taylor`: Taylor importance over the calibration batches. Args: variant: `group` (Molchanov) or one of
    LLM-Pruner's `vectorize`, `param_first`, `param_second`, `param_mix`."""

    name = "taylor"
    needs_data = True

    def __init__(self, variant: str = "group") -> None:
        if variant not in TAYLOR_VARIANTS:
            raise ValueError(f"`taylor_variant` must be one of {list(TAYLOR_VARIANTS)}, got {variant!r}.")
        self.variant = variant

    def scores(self, structure, layers, batches=(), loss_fn=F.cross_entropy):
        if self.variant == "group":
            return taylor_scores(structure, layers, batches, loss_fn)
        return llm_pruner_taylor_scores(structure, layers, batches, loss_fn, self.variant)


class OracleCriterion(Criterion):
    """`oracle`: loss increase when the unit alone is removed. Args: chunk_size: ablations per batched pass."""

    name = "oracle"
    needs_data = True

    def __init__(self, chunk_size: int = 16) -> None:
        self.chunk_size = chunk_size

    def scores(self, structure, layers, batches=(), loss_fn=F.cross_entropy):
        return oracle_scores(structure, layers, batches, loss_fn, chunk_size=self.chunk_size)


class RandomCriterion(Criterion):
    """`random`: seeded uniform scores. Args: seed: generator seed."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def scores(self, structure, layers, batches=(), loss_fn=F.cross_entropy):
        return random_scores(structure, layers, self.seed)


class ExplicitCriterion(Criterion):
    """`explicit`: the given `{layer: pruned indices}` score 0, every other unit 1."""

    name = "explicit"

    def __init__(self, indices: dict[str, list[int]]) -> None:
        self.indices = indices

    def scores(self, structure, layers, batches=(), loss_fn=F.cross_entropy):
        return explicit_scores(structure, layers, self.indices)
