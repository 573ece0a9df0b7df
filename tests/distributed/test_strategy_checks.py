"""Which strategies physical pruning accepts, and the one-line refusals, checked before training starts."""

from __future__ import annotations

import lightning as L
import pytest
from lightning.pytorch.strategies import FSDPStrategy

from lightning_prune.callbacks._distributed import check_strategy, check_train_data


@pytest.mark.parametrize("strategy, devices", [("auto", 1), ("ddp", 2)])
def test_check_strategy_accepts_single_device_and_ddp(strategy, devices):
    trainer = L.Trainer(accelerator="cpu", strategy=strategy, devices=devices, logger=False)
    check_strategy(trainer.strategy, "physical")


def test_check_strategy_refuses_ddp_spawn_and_fsdp_naming_mask_mode():
    spawn = L.Trainer(accelerator="cpu", strategy="ddp_spawn", devices=2, logger=False).strategy
    with pytest.raises(ValueError, match=r"`mode='physical'` must run under .*got DDPStrategy with start_method "
                                         r"'spawn' \(ddp_spawn\).*use `strategy: ddp`, or `mode='mask'`"):
        check_strategy(spawn, "physical")
    with pytest.raises(ValueError, match=r"got FSDPStrategy; use `strategy: ddp`, or `mode='mask'`"):
        check_strategy(FSDPStrategy(), "physical")
    check_strategy(spawn, "mask")  # masks keep every shape: any strategy
    check_strategy(FSDPStrategy(), "mask")


def test_check_train_data_names_the_criterion():
    check_train_data("taylor", True)
    with pytest.raises(ValueError, match=r"^criterion 'oracle' must have training data, got no train dataloader\.$"):
        check_train_data("oracle", False)
