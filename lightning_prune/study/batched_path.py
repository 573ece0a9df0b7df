"""Many trials at once: the masks of one repeat (one data order) retrained together by
`BatchedMaskedClassifier` in one Lightning ``fit``."""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_prune.outcome import retrain_outcome
from lightning_prune.study.building import optimizer_factory, scheduler_factory, seed_datamodule, trainer_kwargs
from lightning_prune.study.seeding import SeedAtTrainStart
from lightning_prune.study.spec import StudyConfig
from lightning_prune.study.trial import Trial, trial_record


def pruned_size(config: StudyConfig, state: dict[str, torch.Tensor], layer_masks: dict[str, list[int]]):
    """Parameters and MACs of the physically pruned network (the same for every mask of a study)."""
    from lightning_prune.models import build_model
    from lightning_prune.pruning import PruningStructure, count_params_and_macs

    network = build_model(config.model, **config.model_kwargs)
    network.load_state_dict(state)
    example = torch.zeros(1, *network.input_shape)
    PruningStructure(network, example).prune(layer_masks)
    return count_params_and_macs(network, example)


def run_batched_trials(
    config: StudyConfig, trials: list[Trial], state: dict[str, torch.Tensor], datamodule, gpu: int | None
) -> list[dict[str, Any]]:
    """Retrain the masks of ``trials`` (one repeat, so one data order) together in one ``fit``.

    Returns:
        One record per trial, as `run_single_trial` gives.
    """
    from lightning_prune.modules.batched import BatchedMaskedClassifier

    if len({t.seed for t in trials}) != 1:
        raise ValueError(f"`trials` must share one seed to be batched, got {sorted({t.seed for t in trials})}.")
    started = time.perf_counter()
    seed = trials[0].seed
    seed_everything(seed, verbose=False)
    retrain = config.retrain
    module = BatchedMaskedClassifier(
        masks=[t.layer_masks for t in trials],
        model=config.model,
        model_kwargs=config.model_kwargs,
        optimizer=optimizer_factory(retrain.optimizer),
        lr_scheduler=scheduler_factory(retrain.lr_scheduler),
    )
    module.load_pretrained(state)
    seed_datamodule(datamodule, seed)
    trainer = Trainer(**trainer_kwargs(config, retrain, gpu), logger=False, callbacks=[SeedAtTrainStart(seed)])
    trainer.fit(module, datamodule=datamodule)
    params, macs = pruned_size(config, state, trials[0].layer_masks)
    seconds = (time.perf_counter() - started) / len(trials)
    records = []
    for trial, pre, history in zip(trials, module.pre_metrics, module.histories, strict=True):
        outcome = retrain_outcome(history, total_epochs=retrain.epochs)
        extra = {"params": params, "macs": macs, "seconds": seconds, "path": "batched", "history": history}
        records.append(trial_record(trial, pre, outcome, extra))
    return records
