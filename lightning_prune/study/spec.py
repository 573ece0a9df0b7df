"""What a study is: dataclasses read from YAML (field docstrings become ``--help``), their validation, and the
fingerprint that ties a ``study_dir`` to the config that produced its results.

Only the parts that define results enter the fingerprint (model, data, pretrained source, masks, recipes, repeats,
seed, prune mode); how the study is executed (executor, workers, shards, W&B, batching) does not.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

CRITERIA = ("l1", "taylor", "oracle")
# Data arguments that move or feed the data without changing it: a study copied to a cluster keeps its fingerprint.
_DATA_ARGS_NOT_FINGERPRINTED = frozenset({"root", "download", "num_workers", "pin_memory", "persistent_workers"})
_SHORT_NAME_PACKAGES = ("lightning_prune.data", "torch.optim", "torch.optim.lr_scheduler")


def _sgd(lr: float) -> dict[str, Any]:
    return {"class_path": "torch.optim.SGD", "init_args": {"lr": lr, "momentum": 0.9, "weight_decay": 1.0e-4}}


def _multistep(milestones: list[int]) -> dict[str, Any]:
    return {"class_path": "torch.optim.lr_scheduler.MultiStepLR", "init_args": {"milestones": milestones, "gamma": 0.1}}


@dataclass
class RecipeConfig:
    """A training recipe: epochs, optimizer and schedule (defaults: the paper's LeNet5-Mini retraining)."""

    epochs: int = 30
    """Training epochs."""
    optimizer: dict[str, Any] = field(default_factory=lambda: _sgd(1.0e-3))
    """Optimizer as `class_path` + `init_args`, e.g. `{class_path: torch.optim.SGD, init_args: {lr: 0.001}}`."""
    lr_scheduler: dict[str, Any] | None = field(default_factory=lambda: _multistep([20]))
    """Learning-rate schedule stepped once per epoch, as `class_path` + `init_args`; null for a constant rate."""
    trainer: dict[str, Any] = field(default_factory=dict)
    """Extra `lightning.Trainer` arguments of this phase, e.g. `{precision: 16-mixed, limit_train_batches: 0.1}`."""


@dataclass
class MaskConfig:
    """Which filters are pruned: layers, ratio, and how the masks are chosen."""

    layers: dict[str, float] = field(default_factory=lambda: {"conv1": 0.5})
    """Glob pattern over module names -> share of that layer's filters pruned, e.g. `{"*layer*.conv1": 0.5}`."""
    sample: int | None = None
    """Number of unique masks drawn at random; null enumerates every combination (252 for 5 of 10 filters)."""
    seed: int = 0
    """Seed of the mask sampling."""
    criteria: list[str] = field(default_factory=lambda: list(CRITERIA))
    """Criteria scored on the pretrained model whose masks are added and marked: any of l1, taylor, oracle."""
    calibration_batches: int = 10
    """Training batches the taylor and oracle criteria score on."""


@dataclass
class StudyConfig:
    """An oracle-pruning correlation study: one pretrained model, many masks, each retrained `repeats` times."""

    name: str = "study"
    """Study name: the W&B group of its runs."""
    study_dir: Path = Path("studies/study")
    """Folder of everything the study writes (masks, trials, results, figures); rerunning resumes from it."""
    model: str = "lenet5_mini"
    """Network name from `lightning_prune.models.available_models()`."""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    """Arguments of the network builder; `{weights: IMAGENET1K_V1}` starts from torchvision's weights."""
    module: dict[str, Any] | None = None
    """Instead of `model`: a LightningModule as `class_path` + `init_args` exposing `model`, `loss_fn` and
    `evaluate_network` (e.g. `lightning_prune.modules.CausalLM` with a random Llama config); recipes inject its
    optimizers. Masks are drawn over its units, e.g. `{"model.layers.0.self_attn": 0.5}`."""
    data: dict[str, Any] = field(
        default_factory=lambda: {"class_path": "lightning_prune.data.MNISTMiniDataModule", "init_args": {}}
    )
    """DataModule as `class_path` + `init_args`; it must provide `train_eval_dataloader()`."""
    pretrain: RecipeConfig | None = None
    """Recipe that pretrains the model once into `study_dir/pretrained.ckpt`; null with `checkpoint` or weights."""
    checkpoint: Path | None = None
    """A pretrained checkpoint (Lightning `.ckpt` or a state dict) instead of `pretrain`."""
    masks: MaskConfig = field(default_factory=MaskConfig)
    """Layers, ratios and mask selection."""
    retrain: RecipeConfig = field(default_factory=RecipeConfig)
    """Recipe that retrains every pruned model."""
    repeats: int = 3
    """Retrainings per mask (seeds `seed`, `seed + 1`, ...); results use per-mask means."""
    seed: int = 0
    """Base seed: pretraining uses it, repeat r retrains with `seed + r` (data order included)."""
    prune_mode: Literal["physical", "mask"] = "physical"
    """How the one-at-a-time path prunes: filters removed (`physical`) or zeroed and kept at zero (`mask`)."""
    executor: Literal["local", "ray"] = "local"
    """Where trials run: `local` processes or `ray` tasks."""
    workers: int = 1
    """Local worker processes (1 runs trials in this process); each is pinned to a GPU round-robin when present."""
    address: str | None = None
    """Ray cluster address (e.g. `auto` or `ray://host:10001`); null starts a local Ray instance."""
    gpus_per_trial: float = 1.0
    """Ray: GPU share of one trial when GPUs are present (0.25 runs four small trials per GPU)."""
    cpus_per_trial: float = 1.0
    """Ray: CPUs reserved by one trial."""
    shard: str | None = None
    """`i/n` runs only the trials whose index modulo n is i (for SLURM job arrays); null runs all."""
    prepare_only: bool = False
    """Only pretrain and draw the masks, then stop: run once before launching shards on a shared file system."""
    batching: Literal["auto", "on", "off"] = "auto"
    """Retrain many masks at once as one batched model: `auto` picks the faster path, `on` forces it if possible."""
    batch_masks: int = 64
    """Masks retrained together by one batched model."""
    accelerator: str = "auto"
    """Lightning accelerator of every fit (`auto`, `cpu`, `gpu`)."""
    cpu_threads: int | None = 1
    """PyTorch CPU threads per trial process; small models run fastest on one (and workers then fill the cores);
    null keeps PyTorch's default."""
    wandb: bool = True
    """Log each trial as a W&B run in the study's group, and a summary run (offline unless WANDB_MODE=online)."""
    wandb_project: str = "lightning-prune"
    """W&B project of the runs."""


_FINGERPRINTED = ("model", "model_kwargs", "data", "pretrain", "checkpoint", "masks", "retrain", "repeats", "seed")


def resolve_class(class_path: str) -> type:
    """Import ``class_path`` (``package.module.Class``, or a bare name from the data/optimizer packages).

    Raises:
        ValueError: if nothing importable has that name.
    """
    candidates = [class_path] if "." in class_path else [f"{pkg}.{class_path}" for pkg in _SHORT_NAME_PACKAGES]
    for candidate in candidates:
        module_name, _, attr = candidate.rpartition(".")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError):
            continue
    raise ValueError(f"`class_path` must name an importable class, got {class_path!r}.")


def check_class_spec(spec: Any, flag: str) -> list[str]:
    """Problems of a ``{class_path, init_args}`` dict (empty when fine)."""
    if not isinstance(spec, dict) or "class_path" not in spec:
        return [f"`--{flag}` must be a mapping with `class_path` (and optional `init_args`), got {spec!r}."]
    problems = []
    unknown = sorted(set(spec) - {"class_path", "init_args"})
    if unknown:
        problems.append(f"`--{flag}` must hold only `class_path` and `init_args`, got extra keys {unknown}.")
    try:
        resolve_class(spec["class_path"])
    except ValueError:
        problems.append(f"`--{flag}.class_path` must name an importable class, got {spec['class_path']!r}.")
    if not isinstance(spec.get("init_args", {}), dict):
        problems.append(f"`--{flag}.init_args` must be a mapping, got {spec['init_args']!r}.")
    return problems


def _check_recipe(recipe: RecipeConfig | None, flag: str) -> list[str]:
    if recipe is None:
        return []
    problems = [] if recipe.epochs >= 1 else [f"`--{flag}.epochs` must be at least 1, got {recipe.epochs}."]
    problems += check_class_spec(recipe.optimizer, f"{flag}.optimizer")
    if recipe.lr_scheduler is not None:
        problems += check_class_spec(recipe.lr_scheduler, f"{flag}.lr_scheduler")
    return problems


def parse_shard(shard: str | None) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)``; None -> ``(0, 1)``.

    Raises:
        ValueError: unless ``0 <= i < n``.
    """
    if shard is None:
        return 0, 1
    index, _, count = shard.partition("/")
    if not (index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise ValueError(f"`--shard` must be `i/n` with 0 <= i < n, got {shard!r}.")
    return int(index), int(count)


def validate(config: StudyConfig) -> None:
    """Check the whole config before any compute; every problem is collected and reported at once.

    Raises:
        ValueError: listing every problem, each naming its flag.
    """
    problems: list[str] = []
    from lightning_prune.models import available_models

    if config.module is not None:
        problems += check_module_spec(config)
    elif config.model not in available_models():
        problems.append(f"`--model` must be one of {available_models()}, got {config.model!r}.")
    problems += check_class_spec(config.data, "data")
    sources = [
        flag
        for flag, given in (
            ("pretrain", config.pretrain is not None),
            ("checkpoint", config.checkpoint is not None),
            ("model_kwargs.weights", config.model_kwargs.get("weights") is not None),
        )
        if given
    ]
    if len(sources) != 1 and not (config.module is not None and not sources):  # a module may bring its weights
        problems.append(
            "Provide exactly one pretrained source: --pretrain (a recipe), --checkpoint or --model_kwargs.weights "
            "(or none with a --module that loads its own weights), "
            f"got {sources or 'none'}."
        )
    if config.checkpoint is not None and not Path(config.checkpoint).is_file():
        problems.append(f"`--checkpoint` must be an existing file, got {str(config.checkpoint)!r}.")
    problems += _check_recipe(config.pretrain, "pretrain")
    problems += _check_recipe(config.retrain, "retrain")
    masks = config.masks
    if not masks.layers:
        problems.append("`--masks.layers` must map at least one layer pattern to a ratio, got {}.")
    problems += [
        f"`--masks.layers[{pattern!r}]` must be a ratio in (0, 1), got {ratio}."
        for pattern, ratio in masks.layers.items()
        if not 0 < ratio < 1
    ]
    if masks.sample is not None and masks.sample < 1:
        problems.append(f"`--masks.sample` must be at least 1 (or null to enumerate), got {masks.sample}.")
    unknown = sorted(set(masks.criteria) - set(CRITERIA))
    if unknown:
        problems.append(f"`--masks.criteria` must be among {list(CRITERIA)}, got {unknown}.")
    if masks.calibration_batches < 1:
        problems.append(f"`--masks.calibration_batches` must be at least 1, got {masks.calibration_batches}.")
    for flag, value, minimum in (("repeats", config.repeats, 1), ("workers", config.workers, 1)):
        if value < minimum:
            problems.append(f"`--{flag}` must be at least {minimum}, got {value}.")
    if config.cpu_threads is not None and config.cpu_threads < 1:
        problems.append(f"`--cpu_threads` must be at least 1 (or null), got {config.cpu_threads}.")
    if config.batch_masks < 1:
        problems.append(f"`--batch_masks` must be at least 1, got {config.batch_masks}.")
    gpus = config.gpus_per_trial
    if gpus <= 0 or (gpus > 1 and not float(gpus).is_integer()):
        problems.append(f"`--gpus_per_trial` must be in (0, 1] or a whole number, got {config.gpus_per_trial}.")
    if config.cpus_per_trial <= 0:
        problems.append(f"`--cpus_per_trial` must be positive, got {config.cpus_per_trial}.")
    try:
        parse_shard(config.shard)
    except ValueError as error:
        problems.append(str(error))
    registry_net = config.module is None and config.model in available_models()
    if config.batching == "on" and registry_net and not _batchable(config):
        problems.append(
            f"`--batching on` needs a network without BatchNorm, Dropout or buffers, got {config.model!r}. "
            "Use --batching auto or off."
        )
    if config.executor == "local" and config.address is not None:
        problems.append("Can't provide --address with --executor local. Choose --executor ray.")
    if problems:
        raise ValueError("Invalid study config:\n  " + "\n  ".join(problems))


def check_module_spec(config: StudyConfig) -> list[str]:
    """Problems of `--module`: a LightningModule class spec, with nothing asking for the batched path."""
    problems = check_class_spec(config.module, "module")
    if not problems:
        from lightning.pytorch import LightningModule

        cls = resolve_class(config.module["class_path"])
        if not (isinstance(cls, type) and issubclass(cls, LightningModule)):
            problems.append(f"`--module.class_path` must name a LightningModule subclass, got {cls!r}.")
    if config.batching == "on":
        problems.append("`--batching on` must not be used with `--module` (its masks retrain one at a time), got on.")
    if config.model_kwargs.get("weights") is not None:
        problems.append("`--model_kwargs` must be empty with `--module` (give the weights in its init_args).")
    return problems


def _batchable(config: StudyConfig) -> bool:
    from lightning_prune.models import build_model
    from lightning_prune.modules.batched import supports_batching

    kwargs = {k: v for k, v in config.model_kwargs.items() if k != "weights"}  # the structure only: no download
    return supports_batching(build_model(config.model, **kwargs))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def defining_config(config: StudyConfig) -> dict[str, Any]:
    """The parts of ``config`` that define results, as plain JSON types (data class paths resolved)."""
    parts = {name: _jsonable(asdict(config)[name]) for name in _FINGERPRINTED}
    if config.module is not None:  # only then: fingerprints of registry-network studies stay as they were
        parts["module"] = _jsonable(config.module)
    data = dict(parts["data"])
    data["class_path"] = _qualified_name(data["class_path"])
    data["init_args"] = {
        k: v for k, v in data.get("init_args", {}).items() if k not in _DATA_ARGS_NOT_FINGERPRINTED
    }
    parts["data"] = data
    parts["checkpoint"] = None if config.checkpoint is None else _file_digest(Path(config.checkpoint))
    return parts


def _qualified_name(class_path: str) -> str:
    try:
        cls = resolve_class(class_path)
    except ValueError:
        return class_path
    return f"{cls.__module__}.{cls.__qualname__}"


def _file_digest(path: Path) -> str:
    """The checkpoint enters the fingerprint by content, so a moved file still matches."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def fingerprint(defining: dict[str, Any]) -> str:
    """A short hash of the results-defining config parts."""
    canonical = json.dumps(defining, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def config_differences(stored: dict[str, Any], given: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two defining configs, with both values."""
    differences = []
    for key in sorted(set(stored) | set(given)):
        old, new = stored.get(key), given.get(key)
        name = f"{prefix}{key}"
        if isinstance(old, dict) and isinstance(new, dict):
            differences += config_differences(old, new, f"{name}.")
        elif old != new:
            differences.append(f"{name} (stored {json.dumps(old)}, given {json.dumps(new)})")
    return differences
