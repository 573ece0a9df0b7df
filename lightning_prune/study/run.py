"""How trials run, from the pretrained state to the trial records, always through the Lightning Trainer:

- what every fit is built from: optimizer factories, the DataModule, the Trainer arguments, the module the study
  trains (`ImageClassifier` over a registry network, or any module given as `module`), the network's weights read
  from ``pretrained.ckpt``, and the context a fit runs in (quiet logs, a fixed number of CPU threads, a reseed
  when training starts);
- the one-at-a-time path: a single ``fit`` of the study's module with the `Pruning` callback (``explicit``
  criterion, the trial's mask, ``prune_at="start"``) and the `CorrelationCallback`, the same code path as a user's
  own ``fit``;
- the batched path: the masks of one repeat (one data order) retrained together by `BatchedMaskedClassifier` in one
  ``fit``;
- `run_unit`, the entry point of every executor: it runs a unit of trials and writes each finished trial's record
  at once, atomically, so an interrupted study loses only the trials in flight.

With `module` (e.g. `CausalLM` with a random Llama config, `MultimodalLM` with a LLaVA config) the study samples
masks over that module's `model` units (MLP channels, query heads, KV groups of a transformers decoder), scores
its criteria with the module's `loss_fn`, and measures pre/post with its `evaluate_network` through the same
`Pruning` callback; the recipe's optimizer and schedule are injected as they are into `ImageClassifier`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer, seed_everything
from typing_extensions import override

from lightning_prune._files import read_checkpoint
from lightning_prune._wandb import finish_wandb
from lightning_prune.callbacks import CorrelationCallback, Pruning
from lightning_prune.callbacks._checkpoints import AtomicCheckpointIO
from lightning_prune.models import build_model
from lightning_prune.modules import ImageClassifier
from lightning_prune.modules.batched import BatchedMaskedClassifier
from lightning_prune.outcome import retrain_outcome
from lightning_prune.pruning import PruningStructure, count_params_and_macs
from lightning_prune.pruning.inputs import first_example
from lightning_prune.study.report import log_trial_run, trial_identity, wandb_logger, write_json
from lightning_prune.study.spec import (
    PRE_KEYS,
    RecipeConfig,
    StudyConfig,
    Trial,
    resolve_class,
    trial_path,
    trial_record,
)


# ------------------------------------------------------------------------------------------ what fits are made of
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


def optimizer_factory(spec: dict[str, Any]):
    """``{class_path, init_args}`` of a ``torch.optim.Optimizer`` -> a callable taking the parameters."""
    return functools.partial(resolve_class(spec["class_path"], torch.optim.Optimizer), **spec.get("init_args") or {})


def scheduler_factory(spec: dict[str, Any] | None):
    """``{class_path, init_args}`` of an ``LRScheduler`` -> a callable taking the optimizer (None: no schedule)."""
    if spec is None:
        return None
    cls = resolve_class(spec["class_path"], torch.optim.lr_scheduler.LRScheduler)
    return functools.partial(cls, **spec.get("init_args") or {})


def build_datamodule(config: StudyConfig, gpu: int | None = None):
    """The study's DataModule; held tensors follow the trial's GPU when the config puts them on CUDA."""
    init_args = dict(config.data.get("init_args") or {})
    if gpu is not None and str(init_args.get("device") or "").startswith("cuda"):
        init_args["device"] = f"cuda:{gpu}"
    return resolve_class(config.data["class_path"], LightningDataModule)(**init_args)


def seed_datamodule(datamodule: Any, seed: int) -> None:
    """Give a DataModule that shuffles by its own seed the run's seed (the repeat's data order)."""
    if hasattr(datamodule, "seed"):
        datamodule.seed = seed


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
        "plugins": [AtomicCheckpointIO()],  # pretrain/last.ckpt is whole or absent, also after a full disk
        **recipe.trainer,
    }


def load_network_state(path: Path, arg: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A network state dict from ``pretrained.ckpt``, a Lightning checkpoint (``model.`` prefix) or a state dict.

    Raises:
        ValueError: in one line naming ``arg`` and the file, if it is unreadable or would run code when loaded.
    """
    return network_state(read_checkpoint(Path(path), arg))


def network_state(payload: Any) -> dict[str, torch.Tensor]:
    """The network state dict inside a loaded checkpoint payload (see `load_network_state`)."""
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else payload
    if state and all(key.startswith("model.") for key in state):
        state = {key.removeprefix("model."): value for key, value in state.items()}
    return state


def study_module(config: StudyConfig, recipe: RecipeConfig | None) -> LightningModule:
    """A fresh module of the study, with `recipe`'s optimizer and schedule for both phases (None: defaults)."""
    kwargs = {}
    if recipe is not None:
        optimizer, scheduler = optimizer_factory(recipe.optimizer), scheduler_factory(recipe.lr_scheduler)
        kwargs = {"optimizer": optimizer, "lr_scheduler": scheduler, "retrain_optimizer": optimizer,
                  "retrain_lr_scheduler": scheduler}
    if config.module is not None:
        cls = resolve_class(config.module["class_path"], LightningModule)
        return cls(**config.module.get("init_args", {}), **kwargs)
    return ImageClassifier(model=config.model, model_kwargs=config.model_kwargs, **kwargs)


def study_network(config: StudyConfig) -> torch.nn.Module:
    """The network the study prunes, freshly built (registry network, or the module's `model`)."""
    if config.module is not None:
        return study_module(config, None).model
    return build_model(config.model, **config.model_kwargs)


def study_scoring(config: StudyConfig, network: torch.nn.Module, batches: list) -> tuple[object, object]:
    """The example input that traces `network` and the loss the criteria score with.

    A registry network traces on zeros of its `input_shape` and scores with cross-entropy; a configured module's
    network traces on the first calibration example and scores with the module's `loss_fn`.
    """
    if config.module is None:
        return torch.zeros(1, *network.input_shape), F.cross_entropy
    loss_fn = getattr(study_module(config, None), "loss_fn", None) or F.cross_entropy
    return first_example(batches[0][0]), loss_fn


def first_batches(loader, count: int) -> list:
    """The first `count` `(inputs, targets)` of a loader."""
    return [(batch[0], batch[1]) for batch in itertools.islice(loader, count)]


# ------------------------------------------------------------------------------------------------ the two paths
def run_single_trial(
    config: StudyConfig, trial: Trial, state: dict[str, torch.Tensor], datamodule, gpu: int | None
) -> dict[str, Any]:
    """Prune with the trial's mask, measure, retrain and measure again, in one Lightning ``fit``.

    Returns:
        The trial record (what ``trials/<trial_id>.json`` holds).
    """
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
    evaluation = _lm_evaluation(config)
    callbacks = [pruning, correlation, SeedAtTrainStart(trial.seed)] + ([] if evaluation is None else [evaluation])
    logger = wandb_logger(config, trial.trial_id, "trial", trial_identity(trial.__dict__))
    try:
        trainer = Trainer(**trainer_kwargs(config, retrain, gpu), logger=logger, callbacks=callbacks)
        trainer.fit(module, datamodule=datamodule)
    finally:
        finish_wandb(logger)
    pruned = pruning.pruned_metrics
    pre = {key: pruned[key.replace("pruned_", "pruned/")] for key in PRE_KEYS}
    outcome = retrain_outcome(correlation.history, total_epochs=retrain.epochs)
    extra = {
        "params": int(pruned["prune/params_after"]),
        "macs": int(pruned["prune/macs_after"]),
        "seconds": time.perf_counter() - started,
        "path": "single",
        "history": correlation.history,
        **({} if evaluation is None else evaluation.results.get("final", {})),  # lm_eval/<task>/<metric>, ppl/...
    }
    return trial_record(trial, pre, outcome, extra)


def _lm_evaluation(config: StudyConfig):
    """The `LmEvaluation` callback of a trial when the study sets `lm_eval`, else None."""
    if config.lm_eval is None:
        return None
    # Imported here: `evaluation/` is a leaf nothing imports at module level (it brings lm-eval, optional and heavy).
    from lightning_prune.evaluation.callback import LmEvaluation

    return LmEvaluation(**config.lm_eval)


def pruned_size(config: StudyConfig, state: dict[str, torch.Tensor], layer_masks: dict[str, list[int]]):
    """Parameters and MACs of the physically pruned network (the same for every mask of a study)."""
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


# ------------------------------------------------------------------------------------------------------ a unit
@functools.lru_cache(maxsize=2)
def _cached_state(path: str, mtime: float) -> dict[str, torch.Tensor]:
    return load_network_state(Path(path))


_DATAMODULES: dict[tuple[str, int | None], Any] = {}


def _cached_datamodule(config: StudyConfig, gpu: int | None):
    key = (repr(config.data), gpu)
    if key not in _DATAMODULES:
        _DATAMODULES.clear()
        _DATAMODULES[key] = build_datamodule(config, gpu)
    return _DATAMODULES[key]


def run_unit(config: StudyConfig, trials: list[Trial], batched: bool, gpu: int | None = None) -> list[str]:
    """Run trials (one, or several batched) and write their records.

    Returns:
        The ids of the trials written.
    """
    study_dir = Path(config.study_dir)
    source = study_dir / "pretrained.ckpt"
    state = _cached_state(str(source), source.stat().st_mtime)
    datamodule = _cached_datamodule(config, gpu)
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
