"""One trial at a time: a single Lightning ``fit`` of `ImageClassifier` with the `Pruning` callback (``explicit``
criterion, the trial's mask, ``prune_at="start"``) and the `CorrelationCallback`: the same code path as a user's
own ``fit``."""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_prune.outcome import retrain_outcome
from lightning_prune.study.building import seed_datamodule, trainer_kwargs
from lightning_prune.study.seeding import SeedAtTrainStart
from lightning_prune.study.spec import StudyConfig
from lightning_prune.study.trial import PRE_KEYS, Trial, trial_record
from lightning_prune.study.wandb_runs import finish_logger, trial_identity, wandb_logger


def run_single_trial(
    config: StudyConfig, trial: Trial, state: dict[str, torch.Tensor], datamodule, gpu: int | None
) -> dict[str, Any]:
    """Prune with the trial's mask, measure, retrain and measure again, in one Lightning ``fit``.

    Returns:
        The trial record (what ``trials/<trial_id>.json`` holds).
    """
    from lightning_prune.callbacks import CorrelationCallback, Pruning
    from lightning_prune.study.modules import study_module

    started = time.perf_counter()
    seed_everything(trial.seed, verbose=False)
    retrain = config.retrain
    module = study_module(config, retrain)
    module.model.load_state_dict(state)
    seed_datamodule(datamodule, trial.seed)
    # The study's validation loader is the test split: its outcomes are named test_* (split="test").
    pruning = Pruning(criterion="explicit", indices=trial.layer_masks, mode=config.prune_mode, prune_at="start",
                      split="test", save_pretrained=False)
    correlation = CorrelationCallback(split="test")
    logger = wandb_logger(config, trial.trial_id, "trial", trial_identity(trial.__dict__))
    try:
        trainer = Trainer(
            **trainer_kwargs(config, retrain, gpu),
            logger=logger,
            callbacks=[pruning, correlation, SeedAtTrainStart(trial.seed)],
        )
        trainer.fit(module, datamodule=datamodule)
    finally:
        finish_logger(logger)
    pruned = pruning.pruned_metrics
    pre = {key: pruned[key.replace("pruned_", "pruned/")] for key in PRE_KEYS}
    outcome = retrain_outcome(correlation.history, total_epochs=retrain.epochs)
    extra = {
        "params": int(pruned["prune/params_after"]),
        "macs": int(pruned["prune/macs_after"]),
        "seconds": time.perf_counter() - started,
        "path": "single",
        "history": correlation.history,
    }
    return trial_record(trial, pre, outcome, extra)
