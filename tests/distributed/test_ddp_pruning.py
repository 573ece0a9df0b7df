"""The Pruning callback under Lightning's DDP (2 CPU processes on gloo) against one process on the same batches.

One launch of 2 processes runs three fits (each spawned process imports torch and Lightning, the slow part):
physical Taylor pruning with a checkpoint, a resume from that checkpoint, and mask-mode oracle pruning. The
one-process references read the same global batches (16 samples = 8 per rank) and the union of the ranks'
calibration batches (2 per rank = 4 in one process).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ddp_fits import fit, fit_in_subprocesses

# Spawns processes (gloo ranks): `make test-fast` skips it.
pytestmark = pytest.mark.slow

TAYLOR = {"criterion": "taylor", "layers": {"conv1": 0.5, "conv2": 0.5}, "prune_at_epoch": 1,
          "calibration_batches": 2, "mode": "physical"}
ORACLE_MASK = {**TAYLOR, "criterion": "oracle", "mode": "mask"}
TAYLOR_SCHEDULE = {**TAYLOR, "schedule": {"steps": 2, "every_n_epochs": 1}, "retrain_recipe": "continue"}


def _ranks(folder: Path) -> list[dict]:
    return [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


def _single(folder: Path, pruning: dict, max_epochs: int) -> dict:
    fit(str(folder), 1, {**pruning, "calibration_batches": 4}, max_epochs=max_epochs)
    return torch.load(folder / "rank0.pt", weights_only=False)


def _assert_states_close(state: dict, reference: dict, atol: float) -> None:
    assert state.keys() == reference.keys()
    for name, value in state.items():
        torch.testing.assert_close(value, reference[name], atol=atol, rtol=0, msg=name)


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp")
    fit_in_subprocesses([
        {"out": str(folder / "physical"), "pruning_kwargs": TAYLOR, "max_epochs": 2,
         "ckpt_dir": str(folder / "ckpt")},
        {"out": str(folder / "resumed"), "pruning_kwargs": TAYLOR, "max_epochs": 3,
         "ckpt_path": str(folder / "ckpt" / "last.ckpt")},
        {"out": str(folder / "mask"), "pruning_kwargs": ORACLE_MASK, "max_epochs": 2},
        {"out": str(folder / "schedule"), "pruning_kwargs": TAYLOR_SCHEDULE, "max_epochs": 3},
    ])
    return folder


def test_ddp_physical_taylor_prunes_and_retrains_identically_on_both_ranks(ddp):
    first, second = _ranks(ddp / "physical")
    assert first["indices"] == second["indices"]
    assert [len(idxs) for idxs in first["indices"].values()] == [3, 2]
    _assert_states_close(second["state"], first["state"], atol=0)
    assert first["state"]["conv1.weight"].shape == (3, 1, 3, 3)  # physically pruned
    assert first["optimizer_params"] == sum(v.numel() for v in first["state"].values())  # rebuilt optimizer


def test_ddp_physical_run_equals_one_process_on_the_same_global_batches(ddp, tmp_path):
    single = _single(tmp_path, TAYLOR, max_epochs=2)
    distributed = _ranks(ddp / "physical")[0]
    assert distributed["indices"] == single["indices"]
    _assert_states_close(distributed["state"], single["state"], atol=1e-4)


def test_ddp_resumes_a_pruned_checkpoint_like_an_uninterrupted_run(ddp, tmp_path):
    first, second = _ranks(ddp / "resumed")
    reference = _single(tmp_path, TAYLOR, max_epochs=3)
    assert first["epoch"] == second["epoch"] == 3
    assert first["indices"] == second["indices"] == reference["indices"]
    _assert_states_close(second["state"], first["state"], atol=0)
    _assert_states_close(first["state"], reference["state"], atol=1e-4)


def test_ddp_mask_mode_keeps_the_same_masks_on_both_ranks(ddp, tmp_path):
    first, second = _ranks(ddp / "mask")
    reference = _single(tmp_path, ORACLE_MASK, max_epochs=2)
    assert first["indices"] == second["indices"] == reference["indices"]
    _assert_states_close(second["state"], first["state"], atol=0)
    _assert_states_close(first["state"], reference["state"], atol=1e-4)
    assert first["state"]["conv1.weight"].shape == (6, 1, 3, 3)
    assert first["state"]["conv1.weight"][first["indices"]["conv1"]].abs().sum() == 0  # still masked after training


def test_ddp_iterative_schedule_prunes_identically_on_both_ranks_and_equals_one_process(ddp, tmp_path):
    first, second = _ranks(ddp / "schedule")
    reference = _single(tmp_path, TAYLOR_SCHEDULE, max_epochs=3)
    assert first["indices"] == second["indices"] == reference["indices"]
    assert [len(idxs) for idxs in first["indices"].values()] == [3, 2]  # two steps reach the full ratios
    _assert_states_close(second["state"], first["state"], atol=0)
    _assert_states_close(first["state"], reference["state"], atol=1e-4)
    assert first["optimizer_params"] == sum(v.numel() for v in first["state"].values())  # rebuilt after step 2
