"""One pruning step: score, choose, apply, record. Pure torch (no Lightning): the `Pruning` callback calls
`check_plan` before training and `prune_step` at each step's epoch, and keeps only the Trainer-side effects
(optimizers, LoRA, checkpoints' best tracking, logging, measuring on the data loaders).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_prune._checks import raise_if
from lightning_prune.pruning.budget import check_reachable, indices_for_budget
from lightning_prune.pruning.build import build_structure
from lightning_prune.pruning.calibration import Batch, LossFn
from lightning_prune.pruning.criteria import build_criterion
from lightning_prune.pruning.distributed import agreed
from lightning_prune.pruning.masks import MaskGuard
from lightning_prune.pruning.metrics import count_params_and_macs
from lightning_prune.pruning.plan import PrunePlan, plan_counts
from lightning_prune.pruning.schedule import (
    ScheduleStep,
    accumulate_history,
    check_structure,
    in_original_numbering,
    merge_indices,
    remaining_scores,
    schedule_step_problem,
    step_counts,
)
from lightning_prune.pruning.structure import PruningStructure


@dataclass
class PruneState:
    """What the steps so far left: cumulative indices (original numbering), the replay record, the mask guard."""

    indices: dict[str, list[int]] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=lambda: {"history": [], "heads": {}})
    guard: MaskGuard | None = None


@dataclass
class StepResult:
    """One step's outcome: the new state, this step's indices (original numbering) and `prune/*`, `budget/*`."""

    state: PruneState
    new: dict[str, list[int]]
    metrics: dict[str, float]
    inexact: list[str]  # mask mode: masked layers whose masking is not exactly removal (a norm spans them)

    def inexact_warning(self) -> str | None:
        """The line to warn with when some masking is not exactly removal, else None."""
        if not self.inexact:
            return None
        return (f"Pruning: masking {self.inexact} is not exactly removal (a LayerNorm/GroupNorm spans them, as for "
                "a ViT's embedding dimension and every ConvNeXt channel layer).")

    def summary(self, plan: PrunePlan, total_steps: int, epoch: int) -> str:
        """The one log line of this step: criterion, mode, step, epoch, parameters and units pruned per layer."""
        metrics = self.metrics
        return (f"Pruning ({plan.criterion.name}, {plan.mode}) step {int(metrics['prune/step'])}/{total_steps} at "
                f"epoch {epoch}: {metrics['prune/params_before']:,} -> {metrics['prune/params_after']:,} parameters; "
                + ", ".join(f"{name}: {len(idxs)}" for name, idxs in self.state.indices.items()))


def pruned_copy(network: torch.nn.Module, example: Any, indices: dict[str, list[int]]) -> torch.nn.Module:
    """A physically pruned deep copy (to count what mask mode saves, or to export it)."""
    clone = copy.deepcopy(network)
    build_structure(clone, example).prune(indices)
    return clone


def check_plan(network: torch.nn.Module, example: Any, plan: PrunePlan, steps: Sequence[ScheduleStep]) -> None:
    """Before any training: the layers, ratios, indices, schedule and budget fit the network (raises if not)."""
    structure = build_structure(network, example)
    check_structure(structure, len(steps), plan.layers, plan.mode)
    counts = plan_counts(structure, plan)
    if len(steps) > 1 and plan.criterion.name != "explicit":
        raise_if(schedule_step_problem(structure, plan.layers, list(steps)))
    if plan.budget is not None:
        check_reachable(network, example, counts, plan.budget_dict())


def _counts(structure: PruningStructure, plan: PrunePlan, steps: Sequence[ScheduleStep], number: int,
            before: dict) -> dict[str, int]:
    """`{layer: units to prune at step `number`}` (> 0 only)."""
    counts = plan_counts(structure, plan) if number == 0 else {}  # validates the full plan at the first step
    if len(steps) > 1:  # one step: the plan's counts (a structure's own rules, e.g. KV head groups)
        counts = step_counts(structure, plan.layers, before, plan.mode, steps[number].fraction)
    return counts


def prune_step(
    network: torch.nn.Module,
    example: Any,
    plan: PrunePlan,
    steps: Sequence[ScheduleStep],
    number: int,
    state: PruneState,
    batches: Callable[[], Sequence[Batch]],
    loss_fn: LossFn,
) -> StepResult:
    """Step `number` (from 0) of `steps`: score the remaining units, choose (per layer, globally or to a budget),
    agree across ranks, then remove them (physical) or mask them (mask mode: `state.guard` replaced), and count.

    Args:
        network: The network (pruned in place).
        example: An input batch the network accepts (tracing and counting).
        plan: The validated plan.
        steps: The plan's steps.
        number: Which step this is.
        state: What earlier steps left.
        batches: Called once, only when the criterion reads data: the calibration batches.
        loss_fn: `loss_fn(outputs, targets) -> scalar` for data criteria.
    """
    structure = build_structure(network, example)
    step, before = steps[number], state.indices
    counts = _counts(structure, plan, steps, number, before)
    criterion = build_criterion(plan.criterion.name, **plan.criterion.options)
    scores: dict[str, torch.Tensor] = {}  # an early step may prune nothing yet (floor of a small fraction)
    if counts:
        scores = criterion.scores(structure, list(counts), batches() if criterion.needs_data else [], loss_fn)
    scores = remaining_scores(scores, before, plan.mode)
    budget_report: dict[str, float] = {}
    if plan.budget is not None:
        choice, budget_report = indices_for_budget(network, example, scores, counts, plan.budget_dict())
    else:
        choice = structure.choose_units(scores, counts, plan.global_pruning)
    choice = agreed(choice, "Pruning's pruned indices")  # rank 0's choice; every rank checks it agrees
    new = in_original_numbering(choice, structure, before, plan.mode)
    indices = merge_indices(before, new)

    metrics: dict[str, float] = {"prune/step": float(number + 1), "prune/fraction": step.fraction}
    metrics["prune/params_before"], metrics["prune/macs_before"] = count_params_and_macs(network, example)
    history, guard, inexact = state.history, state.guard, []
    if plan.mode == "physical":
        if any(choice.values()):
            history = accumulate_history(history, structure.prune(choice), indices)
        measured = network
    else:
        inexact = [name for name in indices if not structure.mask_is_exact(name)]
        if guard is not None:
            guard.remove()
        measured = pruned_copy(network, example, indices)
        guard = MaskGuard(network, structure.parameter_masks(indices))
    metrics["prune/params_after"], metrics["prune/macs_after"] = count_params_and_macs(measured, example)
    metrics.update(budget_report)
    return StepResult(PruneState(indices, history, guard), new, metrics, inexact)
