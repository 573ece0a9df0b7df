"""The pruning engine, no Lightning: the typed plan (`plan.py`), one step (`engine.prune_step`: score, choose, apply,
record), criteria by name (`criteria.py`), Torch-Pruning structure, masks, measurement, checkpoint replay."""

from lightning_prune.pruning.attention import HeadPrunedAttention
from lightning_prune.pruning.bn_scale import bn_scale_scores
from lightning_prune.pruning.checkpoint import load_pruned, restore_pruning
from lightning_prune.pruning.criteria import CRITERIA, build_criterion
from lightning_prune.pruning.engine import PruneState, prune_step
from lightning_prune.pruning.importance import (
    Criterion,
    explicit_scores,
    l1_scores,
    lowest_units,
    random_scores,
    taylor_scores,
)
from lightning_prune.pruning.masks import MaskGuard, apply_masks, parameter_masks
from lightning_prune.pruning.metrics import count_params_and_macs, evaluate_classifier
from lightning_prune.pruning.oracle import oracle_scores
from lightning_prune.pruning.plan import PrunePlan
from lightning_prune.pruning.structure import PrunableLayer, PruningStructure, pruned_count

__all__ = [
    "CRITERIA",
    "Criterion",
    "HeadPrunedAttention",
    "MaskGuard",
    "PrunableLayer",
    "PrunePlan",
    "PruneState",
    "PruningStructure",
    "apply_masks",
    "bn_scale_scores",
    "build_criterion",
    "count_params_and_macs",
    "evaluate_classifier",
    "explicit_scores",
    "l1_scores",
    "load_pruned",
    "lowest_units",
    "oracle_scores",
    "parameter_masks",
    "prune_step",
    "pruned_count",
    "random_scores",
    "restore_pruning",
    "taylor_scores",
]
