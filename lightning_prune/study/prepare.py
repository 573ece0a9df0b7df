"""Everything a study needs before its trials, made once and kept in ``study_dir``:

- ``study.json``: the fingerprint of the results-defining config; a different config is refused before any compute;
- ``pretrained.ckpt``: the network's pretrained state (pretrained here by the `pretrain` recipe, resumably, or copied
  from ``checkpoint`` / torchvision weights);
- ``masks.json``: the masks (enumerated or sampled, reproducibly) and the criteria's masks, marked;

then the trial list (each mask x each repeat). Shards of one study may start together: an exclusive file lock lets
one of them prepare while the others wait.

A *layer mask* is the sorted list of pruned filter indices of one layer; a *mask* maps each selected layer name to
its layer mask (``{"conv1": [0, 3, 5, 7, 8]}``). Layer sizes are given as ``{name: (channels, pruned)}``.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import math
import random
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from lightning_prune._files import write_atomic
from lightning_prune._wandb import finish_wandb
from lightning_prune.callbacks._checkpoints import set_aside_unreadable
from lightning_prune.pruning.build import build_structure
from lightning_prune.pruning.criteria import build_criterion
from lightning_prune.pruning.importance import lowest_units
from lightning_prune.study.report import read_json, wandb_logger, write_json
from lightning_prune.study.run import (
    build_datamodule,
    first_batches,
    load_network_state,
    quiet_lightning,
    seed_datamodule,
    study_module,
    study_network,
    study_scoring,
    trainer_kwargs,
)
from lightning_prune.study.spec import (
    PRETRAIN_DEFINING,
    StudyConfig,
    Trial,
    config_differences,
    defining_config,
    fingerprint,
)

Mask = dict[str, list[int]]
LayerSizes = Mapping[str, tuple[int, int]]

STUDY_FILE = "study.json"
PRETRAINED_FILE = "pretrained.ckpt"
MASKS_FILE = "masks.json"
# Below this many distinct masks, sampling draws from the full enumeration (exact, no rejection loop).
_ENUMERATE_TO_SAMPLE_LIMIT = 200_000
# An enumeration longer than this is refused: it is never what a user meant (use sampling).
MAX_ENUMERATED_MASKS = 1_000_000


@contextlib.contextmanager
def exclusive(study_dir: Path) -> Iterator[None]:
    """Hold ``study_dir/.prepare.lock`` (released by the OS if the process dies)."""
    Path(study_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(study_dir) / ".prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def check_study_dir(config: StudyConfig) -> str:
    """Tie ``study_dir`` to this config: record its fingerprint, or check it against the recorded one.

    A ``study_dir`` whose preparation never finished (no ``masks.json``, no trial) holds no results yet: it takes
    a corrected config, keeping the pretrained weights (finished or partial) when what defines them is unchanged.

    Returns:
        The fingerprint.

    Raises:
        ValueError: if ``study_dir`` holds results of a study whose results-defining config differs (naming what
            differs).
    """
    study_dir = Path(config.study_dir)
    defining = defining_config(config)
    digest = fingerprint(defining)
    path = study_dir / STUDY_FILE
    if path.is_file():
        stored = read_json(path, "Delete it to record this config's fingerprint again (the results stay).",
                           {"fingerprint": str, "config": dict})
        if stored["fingerprint"] == digest:
            return digest
        differences = config_differences(stored["config"], defining)
        if (study_dir / MASKS_FILE).is_file() or any((study_dir / "trials").glob("*.json")):
            raise ValueError(
                f"`--study_dir` {str(study_dir)!r} holds a study with a different config; its results would be mixed "
                f"with this one's. Differences: {'; '.join(differences)}. Use a new --study_dir, or restore these "
                "settings to resume the stored study."
            )
        _forget_unfinished_preparation(study_dir, stored["config"], defining)
        rank_zero_info(f"{study_dir} was never fully prepared; taking the corrected config ({'; '.join(differences)}).")
    write_json(path, {"name": config.name, "fingerprint": digest, "config": defining, "created": time.time()})
    return digest


def _forget_unfinished_preparation(study_dir: Path, stored: dict[str, Any], given: dict[str, Any]) -> None:
    """Drop the pretrained weights of an unfinished preparation unless the corrected config defines them alike."""
    if all(stored.get(part) == given.get(part) for part in PRETRAIN_DEFINING):
        return
    (study_dir / PRETRAINED_FILE).unlink(missing_ok=True)
    shutil.rmtree(study_dir / "pretrain", ignore_errors=True)


def _save_state(path: Path, state: dict[str, torch.Tensor], metrics: dict[str, Any]) -> None:
    write_atomic(path, lambda file: torch.save({"state_dict": state, "metrics": metrics}, file))


def _pretrain(config: StudyConfig) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Run the pretrain recipe as one Lightning fit, resuming from ``study_dir/pretrain/last.ckpt`` if present."""
    recipe = config.pretrain
    seed_everything(config.seed, verbose=False)
    module = study_module(config, recipe)
    datamodule = build_datamodule(config)
    seed_datamodule(datamodule, config.seed)
    folder = Path(config.study_dir) / "pretrain"
    last = folder / "last.ckpt"
    # One file rewritten after every epoch (save_last with save_top_k=0 writes only when training ends): a study
    # killed during pretraining resumes from its last finished epoch.
    checkpoint = ModelCheckpoint(dirpath=folder, filename="last", save_top_k=1, enable_version_counter=False)
    logger = wandb_logger(config, f"{config.name}-pretrain", "pretrain")
    try:
        kwargs = {**trainer_kwargs(config, recipe, gpu=None), "enable_checkpointing": True}
        trainer = Trainer(**kwargs, logger=logger, callbacks=[checkpoint])
        resume = last.is_file() and not set_aside_unreadable(last, "pretraining")
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resume else None)
    finally:
        finish_wandb(logger)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/"))}
    return module.model.state_dict(), metrics


def ensure_pretrained(config: StudyConfig) -> Path:
    """``study_dir/pretrained.ckpt``, made once: pretrained here, or copied from the checkpoint or weights."""
    path = Path(config.study_dir) / PRETRAINED_FILE
    if path.is_file():
        return path
    if config.pretrain is not None:
        what = config.module["class_path"] if config.module is not None else config.model
        rank_zero_info(f"Pretraining {what} for {config.pretrain.epochs} epochs into {path}.")
        with quiet_lightning():
            state, metrics = _pretrain(config)
    elif config.checkpoint is not None:
        state, metrics = load_network_state(Path(config.checkpoint), "--checkpoint"), {}  # `validate` checked it
    else:
        state, metrics = study_network(config).state_dict(), {}
    _save_state(path, state, metrics)
    return path


def pretrained_network(config: StudyConfig) -> torch.nn.Module:
    """The network with the study's pretrained weights, in eval mode."""
    network = study_network(config)
    network.load_state_dict(load_network_state(Path(config.study_dir) / PRETRAINED_FILE))
    return network.eval()


def masks_of_criteria(
    config: StudyConfig, network: torch.nn.Module
) -> tuple[dict[str, tuple[int, int]], dict[str, dict[str, list[int]]]]:
    """The selected layers' sizes and each criterion's choice of filters on the pretrained network.

    Returns:
        ``{layer: (filters, pruned)}`` of the layers the study's patterns select (coupled layers merged), and
        ``{criterion: {layer: pruned indices}}`` scored on ``calibration_batches`` training batches.
    """
    datamodule = build_datamodule(config)
    seed_datamodule(datamodule, config.seed)
    datamodule.setup("fit")
    # The batches the `Pruning` callback scores on: a fit with that criterion prunes exactly the marked mask.
    loader = datamodule.train_eval_dataloader() if hasattr(datamodule, "train_eval_dataloader") else None
    batches = first_batches(loader or datamodule.train_dataloader(), config.masks.calibration_batches)
    example, loss_fn = study_scoring(config, network, batches)
    structure = build_structure(network, example)
    sizes = selected_layer_sizes(structure, config.masks.layers)
    counts = {name: pruned for name, (_, pruned) in sizes.items()}
    choose = getattr(structure, "choose_units", lowest_units)  # transformer heads: equal per KV group
    chosen = {}
    for criterion in config.masks.criteria:
        scores = build_criterion(criterion).scores(structure, list(counts), batches, loss_fn)
        chosen[criterion] = choose(scores, counts)
    return sizes, chosen


def ensure_masks(config: StudyConfig) -> list[dict[str, Any]]:
    """The study's masks from ``masks.json``, drawn and scored once.

    Returns:
        ``[{"mask_id", "layer_masks", "criterion"}]``: the enumerated or sampled masks first, then the criteria's
        masks not among them; ``criterion`` names the criteria that chose a mask (``"l1;oracle"``), else "".
    """
    path = Path(config.study_dir) / MASKS_FILE
    if path.is_file():
        remedy = "Delete it and rerun: the same config draws the same masks again."
        masks = read_json(path, remedy, {"masks": list})["masks"]
        bad = [entry for entry in masks if not (isinstance(entry, dict) and isinstance(entry.get("mask_id"), int)
                                                 and isinstance(entry.get("layer_masks"), dict))]
        if bad:
            raise ValueError(f"`{path}` must list masks with mask_id and layer_masks, got {bad[0]!r}. {remedy}")
        return masks
    sizes, chosen = masks_of_criteria(config, pretrained_network(config))
    sample = config.masks.sample
    drawn = enumerate_masks(sizes) if sample is None else sample_masks(sizes, sample, config.masks.seed)
    entries = [{"mask_id": i, "layer_masks": mask, "criterion": ""} for i, mask in enumerate(drawn)]
    position = {mask_key(entry["layer_masks"]): i for i, entry in enumerate(entries)}
    for criterion, mask in chosen.items():
        mask = {name: sorted(int(i) for i in mask.get(name, [])) for name in sizes}
        key = mask_key(mask)
        if key not in position:
            position[key] = len(entries)
            entries.append({"mask_id": len(entries), "layer_masks": mask, "criterion": ""})
        entry = entries[position[key]]
        entry["criterion"] = ";".join(filter(None, [entry["criterion"], criterion]))
    payload = {
        "layer_sizes": {name: {"filters": n, "pruned": k} for name, (n, k) in sizes.items()},
        "distinct_masks": str(count_masks(sizes)),
        "masks": entries,
    }
    write_json(path, payload)
    return entries


def plan_trials(config: StudyConfig, entries: list[dict[str, Any]]) -> list[Trial]:
    """Every trial of the study: each mask x each repeat, indexed in that order."""
    return [
        Trial(
            index=position * config.repeats + repeat,
            mask_id=int(entry["mask_id"]),
            repeat=repeat,
            seed=config.seed + repeat,
            layer_masks={name: list(indices) for name, indices in entry["layer_masks"].items()},
            criterion=entry["criterion"],
        )
        for position, entry in enumerate(entries)
        for repeat in range(config.repeats)
    ]


# ------------------------------------------------------------------------------------------------------ masks
def selected_layer_sizes(structure, patterns: dict[str, float]) -> dict[str, tuple[int, int]]:
    """``{layer: (filters, pruned)}`` of the layers ``patterns`` select (coupled layers merged)."""
    counts = structure.pruned_counts(structure.select(patterns))
    return {name: (structure.layers[name].units, count) for name, count in counts.items()}


def count_masks(layer_sizes: LayerSizes) -> int:
    """Number of distinct masks: the product over layers of C(channels, pruned).

    Args:
        layer_sizes: ``{layer: (channels, pruned)}``.

    Returns:
        The count, exact (a Python int, however large).
    """
    return math.prod(math.comb(channels, pruned) for channels, pruned in layer_sizes.values())


def _validate_sizes(layer_sizes: LayerSizes) -> None:
    if not layer_sizes:
        raise ValueError("`layer_sizes` must name at least one layer, got {}.")
    for name, (channels, pruned) in layer_sizes.items():
        if not 0 <= pruned < channels:
            raise ValueError(
                f"`layer_sizes[{name!r}]` must prune between 0 and channels - 1 filters, got {pruned} of {channels}."
            )


def iter_masks(layer_sizes: LayerSizes) -> Iterator[Mask]:
    """Every mask in a fixed order: ``itertools.combinations`` per layer, their product across layers.

    Args:
        layer_sizes: ``{layer: (channels, pruned)}``; the first layer varies slowest.

    Yields:
        ``{layer: sorted pruned indices}``.
    """
    _validate_sizes(layer_sizes)
    names = list(layer_sizes)
    per_layer = [itertools.combinations(range(channels), pruned) for channels, pruned in layer_sizes.values()]
    for choice in itertools.product(*per_layer):
        yield {name: list(indices) for name, indices in zip(names, choice, strict=True)}


def enumerate_masks(layer_sizes: LayerSizes) -> list[Mask]:
    """All masks (252 for one layer of 10 filters at ratio 0.5).

    Raises:
        ValueError: if there are more than ``MAX_ENUMERATED_MASKS`` of them.
    """
    total = count_masks(layer_sizes)
    if total > MAX_ENUMERATED_MASKS:
        raise ValueError(
            f"`masks` enumerates at most {MAX_ENUMERATED_MASKS:,} masks, got {total:,} for {dict(layer_sizes)}. "
            "Set `masks.sample: N` to draw N of them instead."
        )
    return list(iter_masks(layer_sizes))


def sample_masks(layer_sizes: LayerSizes, num_masks: int, seed: int) -> list[Mask]:
    """``num_masks`` distinct masks drawn uniformly with a seeded ``random.Random``.

    The same arguments always give the same list in the same order.

    Args:
        layer_sizes: ``{layer: (channels, pruned)}``.
        num_masks: how many distinct masks to draw.
        seed: seed of the generator.

    Raises:
        ValueError: if ``num_masks`` is not positive or exceeds the number of distinct masks.
    """
    _validate_sizes(layer_sizes)
    total = count_masks(layer_sizes)
    if not 0 < num_masks <= total:
        raise ValueError(
            f"`masks.sample` must be between 1 and the number of distinct masks ({total:,} for "
            f"{dict(layer_sizes)}), got {num_masks}."
        )
    rng = random.Random(seed)
    if total <= _ENUMERATE_TO_SAMPLE_LIMIT:
        everything = list(iter_masks(layer_sizes))
        return [everything[i] for i in rng.sample(range(total), num_masks)]
    # Too many to list: draw layer by layer and drop repeats (rare when num_masks << total).
    seen: set[tuple] = set()
    masks: list[Mask] = []
    while len(masks) < num_masks:
        mask = {name: sorted(rng.sample(range(channels), pruned)) for name, (channels, pruned) in layer_sizes.items()}
        key = mask_key(mask)
        if key not in seen:
            seen.add(key)
            masks.append(mask)
    return masks


def mask_key(mask: Mapping[str, list[int]]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """A hashable, order-free form of a mask, for de-duplication."""
    return tuple((name, tuple(sorted(indices))) for name, indices in sorted(mask.items()))
