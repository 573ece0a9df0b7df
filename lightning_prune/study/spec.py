"""What a study is: the dataclasses read from YAML (field docstrings become ``--help``), the fingerprint that ties a
``study_dir`` to the config that produced its results, and its unit of work, the trial (one mask x one repeat) with
the record it writes.

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

from lightning_prune.outcome import pre_retrain_keys

DEFAULT_CRITERIA = ("l1", "taylor", "oracle")
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
    criteria: list[str] = field(default_factory=lambda: list(DEFAULT_CRITERIA))
    """Criteria scored on the pretrained model whose masks are added and marked: l1, taylor, oracle or random."""
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
    executor: str = "local"
    """Where trials run: a name registered in `study.executors` (`local` processes, `ray` tasks)."""
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
    lm_eval: dict[str, Any] | None = None
    """With `module` (a causal LM): arguments of `lightning_prune.evaluation.callback.LmEvaluation` added to every
    trial's fit, e.g. `{tasks: [lightning_prune_tiny_lm], stages: [final]}`; its `final` results enter each trial's
    record and `results.csv` as `lm_eval/<task>/<metric>` columns."""
    post_metric: str = "final/test_acc"
    """What the pruned train loss is correlated with (the `*_acc` entries of the summary and the scatter plot):
    `final/test_acc` (the retrained test accuracy), or `lm_eval/<task>/<metric>` of the `lm_eval` tasks."""
    wandb: bool = True
    """Log each trial as a W&B run in the study's group, and a summary run (offline unless WANDB_MODE=online)."""
    wandb_project: str = "lightning-prune"
    """W&B project of the runs."""


_FINGERPRINTED = (
    "model", "model_kwargs", "data", "pretrain", "checkpoint", "masks", "retrain", "repeats", "seed", "prune_mode"
)  # fmt: skip
# The parts that define the pretrained weights: a study_dir whose preparation never finished keeps them when only
# other parts are corrected.
PRETRAIN_DEFINING = ("model", "model_kwargs", "data", "pretrain", "checkpoint", "seed")


def resolve_class(class_path: str, base: type | None = None) -> type:
    """Import ``class_path`` (``package.module.Class``, or a bare name from the data/optimizer packages).

    Args:
        class_path: Where the class lives.
        base: The class it must be a subclass of (nothing else in a config may be called), or None.

    Raises:
        ValueError: if nothing importable has that name, or it is not a subclass of ``base``.
    """
    candidates = [class_path] if "." in class_path else [f"{pkg}.{class_path}" for pkg in _SHORT_NAME_PACKAGES]
    for candidate in candidates:
        module_name, _, attr = candidate.rpartition(".")
        try:
            found = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError):
            continue
        if base is not None and not (isinstance(found, type) and issubclass(found, base)):
            raise ValueError(f"`class_path` must name a subclass of {base.__name__}, got {class_path!r}.")
        return found
    raise ValueError(f"`class_path` must name an importable class, got {class_path!r}.")


def structural_kwargs(model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The network builder's arguments without ``weights``: the structure only (nothing downloaded)."""
    return {key: value for key, value in model_kwargs.items() if key != "weights"}


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
    if config.lm_eval is not None:  # its results are columns of every trial record
        parts["lm_eval"] = _jsonable(config.lm_eval)
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


# ------------------------------------------------------------------------------------------------------ trials
DEFAULT_POST_METRIC = "final/test_acc"


def post_column(post_metric: str) -> str:
    """The ``results.csv`` column of a post metric: ``final_test_acc`` for the default, else the logged name."""
    return "final_test_acc" if post_metric == DEFAULT_POST_METRIC else post_metric


PRE_KEYS = tuple(pre_retrain_keys("test").values())  # the names `outcome` gives the pruned measurement


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
