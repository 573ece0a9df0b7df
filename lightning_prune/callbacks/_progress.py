"""What a `Pruning` run has done so far, in one object: the callback's saved state (`to_dict`/`from_dict`, the same
keys as before this object existed, so older checkpoints load) and the pruning record its checkpoints carry.

The callback keeps its long-standing attributes (`pruned_indices`, `retrain_history`, `steps_done`, `step_records`,
`pruned_metrics`) as `progress_attribute`s that read and write this object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import torch

from lightning_prune.callbacks._measure import RetrainRecorder
from lightning_prune.outcome import MetricNames
from lightning_prune.pruning.build import build_structure
from lightning_prune.pruning.checkpoint import RECORD_VERSION
from lightning_prune.pruning.engine import PruneState
from lightning_prune.pruning.masks import MaskGuard


@dataclass
class PruningProgress:
    """The steps done and what they left, the last step's metrics and the retrain history since it."""

    recorder: RetrainRecorder  # its start epoch is the last step's epoch (None: not pruned yet); its history
    engine: PruneState = field(default_factory=PruneState)  # cumulative indices, replay history, mask guard
    steps_done: int = 0
    step_records: list[dict[str, Any]] = field(default_factory=list)  # per step: epoch, fraction, its indices
    pruned_metrics: dict[str, float] = field(default_factory=dict)  # the last step's prune/*, budget/*, pruned/*
    example: dict[str, Any] | None = None  # {"shape", "dtype"} of the tracing input

    @property
    def pruned(self) -> bool:
        return self.recorder.start_epoch is not None

    def step_done(self, epoch: int, fraction: float, new: dict[str, list[int]]) -> None:
        """Count a step taken at `epoch` (its indices `new`, original numbering): the retrain history restarts."""
        self.recorder.start(epoch)
        self.step_records.append({"epoch": epoch, "fraction": fraction, "indices": new})
        self.steps_done += 1

    def restore_guard(self, network: torch.nn.Module, example: Any) -> None:
        """Mask mode, resumed after pruning: guard the recorded units again (`example`: the tracing input)."""
        structure = build_structure(network, example)
        self.engine.guard = MaskGuard(network, structure.parameter_masks(self.engine.indices))

    def to_dict(self) -> dict[str, Any]:
        """The callback's `state_dict` (its keys are what checkpoints hold under the callback's state key)."""
        return {
            "pruned_at": self.recorder.start_epoch, "pruned_indices": self.engine.indices, "example": self.example,
            "history": self.engine.history, "pruned_metrics": self.pruned_metrics,
            "retrain_history": self.recorder.history, "steps_done": self.steps_done, "step_records": self.step_records,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any], names: MetricNames, guard: MaskGuard | None = None) -> PruningProgress:
        """The progress `to_dict` saved (`guard`: a mask guard already installed, kept)."""
        recorder = RetrainRecorder(names)
        recorder.start(state["pruned_at"])
        recorder.history.extend(state["retrain_history"])
        engine = PruneState(state["pruned_indices"], state["history"], guard)
        # states saved before schedules existed: one step, done once pruned
        steps_done = state.get("steps_done", int(state["pruned_at"] is not None))
        return cls(recorder, engine, steps_done, state.get("step_records", []), state["pruned_metrics"],
                   state["example"])

    def checkpoint_record(self, target: str, mode: str, criterion: str) -> dict[str, Any]:
        """What a checkpoint saved after pruning carries for `restore_pruning` (see `pruning/checkpoint.py`)."""
        return {"version": RECORD_VERSION, "target": target, "mode": mode, "criterion": criterion, "phase": "retrain",
                "indices": self.engine.indices, "example_input": self.example, "steps": self.step_records,
                **self.engine.history}


def progress_attribute(path: str, doc: str) -> property:
    """A callback attribute that reads and writes `self._progress.<path>` (e.g. `"engine.indices"`)."""
    owner_path, _, name = f"_progress.{path}".rpartition(".")
    owner = attrgetter(owner_path)
    return property(lambda self: getattr(owner(self), name),
                    lambda self, value: setattr(owner(self), name, value), doc=doc)
