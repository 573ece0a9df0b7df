"""A trial: one mask x one repeat, its record file, and the record it writes.

How a trial runs lives beside it: `single_path` (one ``fit`` per trial, the user's own code path), `batched_path`
(the masks of one repeat retrained together), `worker` (the entry point of every executor, which writes each
finished trial's record at once, atomically, so an interrupted study loses only the trials in flight).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRE_KEYS = ("pruned_train_loss", "pruned_train_acc", "pruned_test_loss", "pruned_test_acc")


@dataclass(frozen=True)
class Trial:
    """One retraining of one mask.

    Attributes:
        index: Position in the study's trial list (shards take ``index % n == i``).
        mask_id: Position of the mask in ``masks.json``.
        repeat: Repeat number; the retrain seed is ``study seed + repeat``.
        seed: Retrain seed.
        layer_masks: ``{layer: pruned filter indices}``.
        criterion: Criteria that chose this mask (``"l1;oracle"``), empty for random masks.
    """

    index: int
    mask_id: int
    repeat: int
    seed: int
    layer_masks: dict[str, list[int]] = field(hash=False)
    criterion: str = ""

    @property
    def trial_id(self) -> str:
        return f"m{self.mask_id:05d}-r{self.repeat}"


def trial_path(study_dir: Path, trial_id: str) -> Path:
    """Where a finished trial's record lives."""
    return Path(study_dir) / "trials" / f"{trial_id}.json"


def trial_record(
    trial: Trial, pre: dict[str, float], outcome: dict[str, float], extra: dict[str, Any]
) -> dict[str, Any]:
    """What ``trials/<trial_id>.json`` holds: the trial, its pruned metrics (``PRE_KEYS``), outcome and extras."""
    return {
        "trial_id": trial.trial_id,
        "mask_id": trial.mask_id,
        "repeat": trial.repeat,
        "seed": trial.seed,
        "layer_masks": trial.layer_masks,
        "criterion": trial.criterion,
        **{key: float(pre[key]) for key in PRE_KEYS},
        **outcome,
        **extra,
    }
