"""Trials: one mask x one repeat, run through the Lightning Trainer, one at a time or many masks at once.

One at a time, a trial is a single ``fit`` of `ImageClassifier` with the `Pruning` callback (``explicit`` criterion,
the trial's mask, ``prune_at="start"``) and the `CorrelationCallback`: the same code path as a user's own ``fit``.
Batched, the masks of one repeat are retrained together by `BatchedMaskedClassifier` in one ``fit``. Either way
each finished trial is written to ``trials/<trial_id>.json`` at once (atomically), so an interrupted study loses
only the trials in flight.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from typing_extensions import override

from lightning_prune.study.outcome import retrain_outcome
from lightning_prune.study.report import write_json
from lightning_prune.study.spec import RecipeConfig, StudyConfig, resolve_class

_PRE_KEYS = ("pruned_train_loss", "pruned_train_acc", "pruned_test_loss", "pruned_test_acc")


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


# ---------------------------------------------------------------------------------------------------- building
def class_callable(spec: dict[str, Any] | None):
    """``{class_path, init_args}`` -> a callable taking the remaining positional argument (params / optimizer)."""
    if spec is None:
        return None
    return functools.partial(resolve_class(spec["class_path"]), **spec.get("init_args", {}))


def build_datamodule(config: StudyConfig, gpu: int | None = None):
    """The study's DataModule; held tensors follow the trial's GPU when the config puts them on CUDA."""
    init_args = dict(config.data.get("init_args", {}))
    if gpu is not None and str(init_args.get("device") or "").startswith("cuda"):
        init_args["device"] = f"cuda:{gpu}"
    return resolve_class(config.data["class_path"])(**init_args)


def load_network_state(path: Path) -> dict[str, torch.Tensor]:
    """A network state dict from ``pretrained.ckpt``, a Lightning checkpoint (``model.`` prefix) or a state dict."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else payload
    if state and all(key.startswith("model.") for key in state):
        state = {key.removeprefix("model."): value for key, value in state.items()}
    return state


def trainer_kwargs(config: StudyConfig, recipe: RecipeConfig, gpu: int | None) -> dict[str, Any]:
    """Trainer arguments shared by every fit of the study."""
    if gpu is not None:
        placement = {"accelerator": "gpu", "devices": [gpu]}
    else:
        placement = {"accelerator": config.accelerator, "devices": 1}
    return {
        **placement,
        "max_epochs": recipe.epochs,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "default_root_dir": str(Path(config.study_dir) / "runs"),
        **recipe.trainer,
    }


def wandb_logger(config: StudyConfig, name: str, job_type: str, extra: dict[str, Any] | None = None):
    """A W&B run in the study's group (offline unless WANDB_MODE=online), or False when W&B is off."""
    if not config.wandb:
        return False
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(
        project=config.wandb_project,
        name=name,
        group=config.name,
        job_type=job_type,
        save_dir=str(config.study_dir),
        offline=os.environ.get("WANDB_MODE", "offline") != "online",
        config=extra or {},
    )


def finish_logger(logger: Any) -> None:
    """Close a W&B run so the next trial in this process starts its own."""
    if logger and getattr(logger, "_experiment", None) is not None:
        logger.experiment.finish()


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide Lightning's per-fit chatter (devices, max_epochs reached, a few batches per epoch): a study runs
    thousands of fits."""
    names = ("lightning.pytorch", "lightning.fabric", "lightning")
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` PyTorch CPU threads (None: unchanged); the previous count is restored."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class SeedAtTrainStart(Callback):
    """Reseeds the global RNGs when training starts, so that both paths (one at a time, batched) retrain from the
    same random state whatever consumed it before (building and loading the model, criteria, measuring)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        seed_everything(self.seed, verbose=False)


def _identity(fields: dict[str, Any]) -> dict[str, Any]:
    """What a trial's W&B run is filtered by: mask, repeat, seed, criterion and the pruned filters."""
    keys = ("mask_id", "repeat", "seed", "criterion", "layer_masks")
    return {key: json.dumps(fields[key]) if key == "layer_masks" else fields[key] for key in keys}


def _record(trial: Trial, pre: dict[str, float], outcome: dict[str, float], extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "trial_id": trial.trial_id,
        "mask_id": trial.mask_id,
        "repeat": trial.repeat,
        "seed": trial.seed,
        "layer_masks": trial.layer_masks,
        "criterion": trial.criterion,
        **{key: float(pre[key]) for key in _PRE_KEYS},
        **outcome,
        **extra,
    }


# ------------------------------------------------------------------------------------------------ one at a time
def run_single_trial(config: StudyConfig, trial: Trial, state: dict[str, torch.Tensor], datamodule, gpu: int | None):
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
    if hasattr(datamodule, "seed"):
        datamodule.seed = trial.seed  # the repeat's data order
    pruning = Pruning(criterion="explicit", indices=trial.layer_masks, mode=config.prune_mode, prune_at="start",
                      save_pretrained=False)
    correlation = CorrelationCallback()
    logger = wandb_logger(config, trial.trial_id, "trial", _identity(trial.__dict__))
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
    pre = {key: pruned[key.replace("pruned_", "pruned/")] for key in _PRE_KEYS}
    outcome = retrain_outcome(correlation.history, total_epochs=retrain.epochs)
    extra = {
        "params": int(pruned["prune/params_after"]),
        "macs": int(pruned["prune/macs_after"]),
        "seconds": time.perf_counter() - started,
        "path": "single",
        "history": correlation.history,
    }
    return _record(trial, pre, outcome, extra)


# ------------------------------------------------------------------------------------------------------ batched
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
        One record per trial, as :func:`run_single_trial` gives.
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
        optimizer=class_callable(retrain.optimizer),
        lr_scheduler=class_callable(retrain.lr_scheduler),
    )
    module.load_pretrained(state)
    if hasattr(datamodule, "seed"):
        datamodule.seed = seed
    trainer = Trainer(**trainer_kwargs(config, retrain, gpu), logger=False, callbacks=[SeedAtTrainStart(seed)])
    trainer.fit(module, datamodule=datamodule)
    params, macs = pruned_size(config, state, trials[0].layer_masks)
    seconds = (time.perf_counter() - started) / len(trials)
    records = []
    for trial, pre, history in zip(trials, module.pre_metrics, module.histories, strict=True):
        outcome = retrain_outcome(history, total_epochs=retrain.epochs)
        extra = {"params": params, "macs": macs, "seconds": seconds, "path": "batched", "history": history}
        records.append(_record(trial, pre, outcome, extra))
    return records


def log_trial_run(config: StudyConfig, record: dict[str, Any]) -> None:
    """The W&B run of a batched trial, written after the fact: its history, then ``pre/*`` and ``post/*``."""
    logger = wandb_logger(config, record["trial_id"], "trial", _identity(record))
    if not logger:
        return
    try:
        for entry in record["history"]:
            metrics = {"val/acc": entry["test_acc"], "val/loss": entry["test_loss"], "train/loss": entry["train_loss"]}
            logger.log_metrics(metrics, step=int(entry["epoch"]))
        pre = {key.replace("pruned_", "pre/"): record[key] for key in _PRE_KEYS}
        post = {
            "post/test_acc": record["final_test_acc"],
            "post/test_loss": record["final_test_loss"],
            "post/train_loss": record["final_train_loss"],
            "post/short_retrain_test_acc": record["short_retrain_test_acc"],
        }
        logger.log_metrics({**pre, **post})
    finally:
        finish_logger(logger)


# --------------------------------------------------------------------------------------------- worker entry point
@functools.lru_cache(maxsize=2)
def _cached_state(path: str, mtime: float) -> dict[str, torch.Tensor]:
    return load_network_state(Path(path))


_DATAMODULES: dict[tuple[str, int | None], Any] = {}


def run_unit(config: StudyConfig, trials: list[Trial], batched: bool, gpu: int | None = None) -> list[str]:
    """Run trials (one, or several batched) and write their records; the entry point of every executor.

    The pretrained weights and the DataModule are kept per process, so a worker loads them once.

    Returns:
        The ids of the trials written.
    """
    study_dir = Path(config.study_dir)
    source = study_dir / "pretrained.ckpt"
    state = _cached_state(str(source), source.stat().st_mtime)
    key = (repr(config.data), gpu)
    if key not in _DATAMODULES:
        _DATAMODULES.clear()
        _DATAMODULES[key] = build_datamodule(config, gpu)
    datamodule = _DATAMODULES[key]
    with quiet_lightning(), cpu_threads(config.cpu_threads):
        if batched:
            records = run_batched_trials(config, trials, state, datamodule, gpu)
            for record in records:
                log_trial_run(config, record)
        else:
            records = [run_single_trial(config, trial, state, datamodule, gpu) for trial in trials]
    for record in records:
        write_json(trial_path(study_dir, record["trial_id"]), record)
    return [record["trial_id"] for record in records]
