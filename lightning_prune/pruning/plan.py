"""The prune plan: what to prune, by which criterion, when and how far, as typed data with every problem listed at
once (`PrunePlan.problems()`, like the study's spec). The `Pruning` callback builds one from its arguments, records
`PrunePlan.record()` in its checkpoints, and hands it to `engine.prune_step`. Pure Python; no Lightning.

A plan's criterion is `{name, options}`: the name is one of `criteria.CRITERIA`, the options the keywords of that
criterion's class (`l1`: reduction; `random`: seed; `explicit`: indices; `taylor`: variant; `oracle`: chunk_size;
`bn_scale`: reduction).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lightning_prune._checks import int_problems
from lightning_prune.pruning.budget import BUDGET_METRICS, budget_problems
from lightning_prune.pruning.criteria import CRITERIA, build_criterion, option_problems
from lightning_prune.pruning.importance import TAYLOR_VARIANTS
from lightning_prune.pruning.schedule import ScheduleStep, schedule_problems, schedule_steps
from lightning_prune.pruning.structure import PruningStructure, check_ratios

MODES = ("physical", "mask")


@dataclass(frozen=True)
class CriterionChoice:
    """A criterion by name and the options its class takes."""

    name: str = "l1"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Schedule:
    """Iterative pruning (`schedule.py`): `steps` every `every_n_epochs` epochs, or `at` `[[epoch, fraction], ...]`."""

    steps: int | None = None
    every_n_epochs: int | None = None
    at: list[list[float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys of neither form (a problem)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Schedule:
        known = {key: config[key] for key in ("steps", "every_n_epochs", "at") if key in config}
        return cls(**known, extra={key: value for key, value in config.items() if key not in known})

    def as_dict(self) -> dict[str, Any]:
        """The YAML form (as given: only the keys set)."""
        given = {"steps": self.steps, "every_n_epochs": self.every_n_epochs, "at": self.at}
        return {**{key: value for key, value in given.items() if value is not None}, **self.extra}


@dataclass(frozen=True)
class Budget:
    """Prune globally until the measured `metric` (`macs` or `params`) is at most `fraction` of the unpruned one."""

    metric: str
    fraction: float

    def as_dict(self) -> dict[str, float]:
        return {self.metric: self.fraction}


@dataclass(frozen=True)
class PrunePlan:
    """Everything that decides which units go (see the `Pruning` callback for each field's meaning)."""

    criterion: CriterionChoice = field(default_factory=CriterionChoice)
    layers: dict[str, float] = field(default_factory=dict)
    mode: str = "physical"
    prune_at: str | None = None
    prune_at_epoch: int | None = None
    target: str = "model"
    global_pruning: bool = False
    calibration_batches: int = 10
    schedule: Schedule | None = None
    budget: Budget | None = None
    given_options: bool = False  # the options were given as `criterion_options` (then they are recorded too)

    @classmethod
    def from_arguments(cls, criterion: str, options: dict[str, Any], schedule: Any, budget: Any, **rest) -> PrunePlan:
        """A plan from the callback's YAML arguments (malformed `schedule`/`budget` are kept for `problems()`)."""
        if isinstance(schedule, dict):
            schedule = Schedule.from_config(dict(schedule))
        if isinstance(budget, dict) and not budget_problems(budget):
            budget = Budget(*next(iter(budget.items())))
        return cls(criterion=CriterionChoice(criterion, dict(options)), schedule=schedule or None,
                   budget=budget or None, **rest)

    # ------------------------------------------------------------------------------------------------ views
    @property
    def indices(self) -> dict[str, list[int]]:
        """`{layer: pruned indices}` of the `explicit` criterion (else empty)."""
        return self.criterion.options.get("indices", {}) if self.criterion.name == "explicit" else {}

    @property
    def prune_epoch(self) -> int:
        return 0 if self.prune_at == "start" else int(self.prune_at_epoch)

    @property
    def needs_data(self) -> bool:
        """Whether the criterion reads training batches (`taylor`, `oracle`)."""
        return build_criterion(self.criterion.name, **self.criterion.options).needs_data

    def schedule_dict(self) -> Any:
        return self.schedule.as_dict() if isinstance(self.schedule, Schedule) else self.schedule

    def budget_dict(self) -> Any:
        return self.budget.as_dict() if isinstance(self.budget, Budget) else self.budget

    def steps(self) -> list[ScheduleStep]:
        """The pruning steps (one, at the prune epoch, without a schedule)."""
        return schedule_steps(self.schedule_dict(), self.prune_epoch)

    def record(self) -> dict[str, Any]:
        """The plan as checkpoints record it (compared when a fit resumes; same keys as before plans were typed)."""
        record = {"target": self.target, "criterion": self.criterion.name, "mode": self.mode, "layers": self.layers,
                  "indices": self.indices, "prune_epoch": self.prune_epoch, "schedule": self.schedule_dict(),
                  "global_pruning": self.global_pruning, "budget": self.budget_dict(),
                  "taylor_variant": self.criterion.options.get("variant", "group")}
        if self.given_options:
            record["criterion_options"] = self.criterion.options
        return record

    # --------------------------------------------------------------------------------------------- problems
    def problems(self) -> list[str]:
        """Every problem of the plan, each naming the argument, the value and the valid choices."""
        name, options = self.criterion.name, self.criterion.options
        problems = []
        if name not in CRITERIA:
            problems.append(f"`criterion` must be one of {list(CRITERIA)}, got {name!r}.")
        if self.mode not in MODES:
            problems.append(f"`mode` must be one of {list(MODES)}, got {self.mode!r}.")
        problems += self._epoch_problems() + self._layer_problems()
        problems += int_problems("calibration_batches", self.calibration_batches, 1)
        if options.get("reduction", "sum") not in ("sum", "mean") and name == "l1":
            problems.append(f"`l1_reduction` must be one of ['sum', 'mean'], got {options['reduction']!r}.")
        problems += budget_problems(self.budget_dict())
        if self.budget is not None and name == "explicit":
            problems.append("`budget` must be None for criterion 'explicit' (the indices are given).")
        problems += schedule_problems(self.schedule_dict(), name, self.budget_dict())
        variant = options.get("variant", "group")
        if variant not in TAYLOR_VARIANTS:
            problems.append(f"`taylor_variant` must be one of {list(TAYLOR_VARIANTS)}, got {variant!r}.")
        if name not in ("l1", "taylor") or self.given_options:  # the flat arguments' values are checked above
            problems += [p for p in option_problems(name, options) if p not in problems]
        return problems

    def _epoch_problems(self) -> list[str]:
        prune_at, epoch = self.prune_at, self.prune_at_epoch
        if prune_at is not None and epoch is not None:
            return ["Can't provide both `prune_at` and `prune_at_epoch`. Choose one."]
        if prune_at is None and epoch is None:
            return ["`prune_at: start` or `prune_at_epoch: N` must be given, got neither."]
        if prune_at is not None and prune_at != "start":
            return [f"`prune_at` must be 'start' or None, got {prune_at!r}."]
        return [] if epoch is None else int_problems("prune_at_epoch", epoch, 0)

    def _layer_problems(self) -> list[str]:
        if self.criterion.name == "explicit":
            indices = self.criterion.options.get("indices")
            problems = []
            if not indices:
                problems.append("`indices` must give {layer: pruned indices} for criterion 'explicit', got none.")
            elif isinstance(indices, dict) and any(not units for units in indices.values()):
                empty = [name for name, units in indices.items() if not units]
                problems.append(
                    f"`indices` must list at least one unit to prune per layer, got none for {empty} "
                    "(that layer would train unpruned): leave it out or list its units."
                )
            if self.layers:
                problems.append("`layers` must be empty for criterion 'explicit' (the layers are the keys of "
                                "`indices`).")
            if self.global_pruning:
                problems.append("`global_pruning` must be false for criterion 'explicit'.")
            return problems
        problems = []
        if not self.layers:
            problems.append("`layers` must map at least one glob pattern to a ratio, e.g. {'conv1': 0.5}, got none.")
        else:
            try:
                check_ratios(self.layers)
            except ValueError as error:
                problems.append(str(error))
        return problems


def plan_counts(structure: PruningStructure, plan: PrunePlan) -> dict[str, int]:
    """`{layer: units to prune}` of the whole plan (validated: raises on bad patterns, ratios or indices, or
    nothing to prune)."""
    if plan.criterion.name == "explicit":
        return {name: len(idxs) for name, idxs in structure.check_indices(plan.indices).items()}
    ratios = structure.select(plan.layers)
    counts = structure.pruned_counts(ratios)
    for name, count in counts.items():
        if count == 0 and ratios[name] > 0:
            units = structure.layers[name].units
            raise ValueError(
                f"`layers` ratio for {name!r} must prune at least one of its {units} units, got {ratios[name]} "
                f"(floor({ratios[name]} * {units}) = 0, so it would train unpruned); use at least "
                f"{1 / units:.4g} or leave the layer out."
            )
    counts = {name: count for name, count in counts.items() if count > 0}
    if not counts:
        raise ValueError(f"`layers` must prune at least one unit, got ratios that prune none: {plan.layers}.")
    return counts


__all__ = ["BUDGET_METRICS", "Budget", "CriterionChoice", "PrunePlan", "Schedule", "plan_counts"]
