"""`bn_scale`: BatchNorm-scale importance (Liu et al., 2017, network slimming; Torch-Pruning's `BNScaleImportance`).

A unit's score is `|gamma|` of the BatchNorm channels in its dependency group (the BN that follows the conv, and any
other BN the group reaches, e.g. a residual partner's), summed over the group, or averaged with `reduction: mean`.
A layer whose group reaches no affine BatchNorm cannot be scored this way and is refused before any pruning.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune.pruning.calibration import LossFn
from lightning_prune.pruning.importance import Criterion
from lightning_prune.pruning.structure import PruningStructure

REDUCTIONS = ("sum", "mean")


def _batchnorm_weights(structure: PruningStructure) -> set[str]:
    """Names of the affine scale parameters (`gamma`) of every BatchNorm of the network."""
    return {
        f"{name}.weight" if name else "weight"
        for name, module in structure.network.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine
    }


def bn_scale_scores(
    structure: PruningStructure, layers: Sequence[str], reduction: str = "sum"
) -> dict[str, torch.Tensor]:
    """`|gamma|` of the BatchNorm channels of each unit's group, summed (or averaged) over the group.

    Args:
        structure: The network's structure.
        layers: Layer names.
        reduction: `"sum"` over the group's BatchNorm channels, or `"mean"` (the sum divided by their number).

    Returns:
        `{layer: [units] float64 scores}`.

    Raises:
        ValueError: For an unknown `reduction`, or a layer whose group reaches no affine BatchNorm.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"`bn_scale` option `reduction` must be one of {list(REDUCTIONS)}, got {reduction!r}.")
    gammas, parameters = _batchnorm_weights(structure), dict(structure.network.named_parameters())
    scores, missing = {}, []
    for name in layers:
        units = structure.layers[name].units
        total = torch.zeros(units, dtype=torch.float64)
        count = torch.zeros(units, dtype=torch.float64)
        for piece in structure.slices(name):
            if piece.param in gammas:
                weight = parameters[piece.param]
                total += piece.per_unit_sum(weight.abs(), units).cpu()
                count += piece.per_unit_sum(torch.ones_like(weight), units).cpu()
        if not bool(count.gt(0).all()):
            missing.append(name)
        scores[name] = total / count.clamp(min=1) if reduction == "mean" else total
    if missing:
        raise ValueError(
            f"criterion 'bn_scale' must score layers whose group has a BatchNorm, got none for {missing}; "
            "choose layers followed by a BatchNorm or another criterion."
        )
    return scores


class BNScaleCriterion(Criterion):
    """`bn_scale`: |BatchNorm gamma| over the unit's group. Args: reduction: `"sum"` or `"mean"` over the group."""

    name = "bn_scale"

    def __init__(self, reduction: str = "sum") -> None:
        if reduction not in REDUCTIONS:
            raise ValueError(f"`bn_scale` option `reduction` must be one of {list(REDUCTIONS)}, got {reduction!r}.")
        self.reduction = reduction

    def scores(self, structure, layers, batches=(), loss_fn: LossFn = F.cross_entropy):
        return bn_scale_scores(structure, layers, self.reduction)
