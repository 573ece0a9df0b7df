"""Every check a study config can get without data or compute, run before anything is trained or written.

Each rule is asked of the code that owns it (ratio range: `pruning.structure.check_ratios`; criteria:
`pruning.criteria.CRITERIA`; which filters a ratio prunes: `PruningStructure`; how many masks exist:
`study.prepare`; batching: `modules.batched.supports_batching`), so the study cannot drift from what runs later.
Every problem is collected and reported at once, each naming its flag.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer

from lightning_prune._files import read_checkpoint
from lightning_prune.models import available_models, build_model
from lightning_prune.modules.batched import supports_batching
from lightning_prune.pruning.criteria import CRITERIA
from lightning_prune.pruning.structure import PruningStructure, check_ratios
from lightning_prune.study.executors import executor_names
from lightning_prune.study.prepare import MAX_ENUMERATED_MASKS, count_masks, selected_layer_sizes
from lightning_prune.study.run import network_state
from lightning_prune.study.spec import (
    DEFAULT_POST_METRIC,
    RecipeConfig,
    StudyConfig,
    parse_shard,
    resolve_class,
    structural_kwargs,
)

# A criterion the study can score on the pretrained model by name alone (``explicit`` needs indices).
_NOT_SCORED = frozenset({"explicit"})


def study_criteria() -> tuple[str, ...]:
    """Criteria a study may mark masks with: the pruning package's, less those that need extra input."""
    return tuple(name for name in CRITERIA if name not in _NOT_SCORED)


# What each ``class_path`` slot must name (nothing else in a config may be called).
SLOT_BASES: dict[str, type] = {
    "module": LightningModule,
    "data": LightningDataModule,
    "optimizer": torch.optim.Optimizer,
    "lr_scheduler": torch.optim.lr_scheduler.LRScheduler,
}


def _accepted_arguments(cls: type, skip: int) -> tuple[list[str], bool]:
    """Keyword arguments of ``cls`` after its first ``skip`` ones, and whether it also takes ``**kwargs``."""
    parameters = list(inspect.signature(cls).parameters.values())[skip:]
    names = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind is p.VAR_KEYWORD for p in parameters)


def _try_build(cls: type, slot: str, init_args: dict[str, Any]) -> None:
    """Build the object once on a dummy parameter, so that a wrong value fails here and not after pretraining."""
    if slot == "module":  # built at preparation: a module may load its weights (no download here)
        return
    if slot == "data":
        cls(**init_args)
        return
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    if slot == "optimizer":
        cls(optimizer.param_groups[0]["params"], **init_args)
    else:
        cls(optimizer, **init_args)


def check_class_spec(spec: Any, flag: str, slot: str) -> list[str]:
    """Problems of a ``{class_path, init_args}`` dict for ``slot`` (``data``, ``optimizer``, ``lr_scheduler``).

    The class must be a subclass of the slot's base, ``init_args`` must be arguments it takes, and it must build
    with them; empty when fine.
    """
    if not isinstance(spec, dict) or "class_path" not in spec:
        return [f"`--{flag}` must be a mapping with `class_path` (and optional `init_args`), got {spec!r}."]
    unknown = sorted(set(spec) - {"class_path", "init_args"})
    if unknown:
        return [f"`--{flag}` must hold only `class_path` and `init_args`, got extra keys {unknown}."]
    init_args = spec.get("init_args", {}) if spec.get("init_args") is not None else {}
    if not isinstance(init_args, dict):
        return [f"`--{flag}.init_args` must be a mapping, got {init_args!r}."]
    base = SLOT_BASES[slot]
    try:
        cls = resolve_class(str(spec["class_path"]), base)
    except ValueError as error:
        return [str(error).replace("`class_path`", f"`--{flag}.class_path`", 1)]
    names, open_ended = _accepted_arguments(cls, skip=0 if slot in ("data", "module") else 1)
    typos = sorted(set(init_args) - set(names))
    if typos and not open_ended:
        return [f"`--{flag}.init_args` must be among {names} for {cls.__name__}, got unexpected {typos}."]
    try:
        _try_build(cls, slot, init_args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        return [f"`--{flag}.init_args` must be accepted by {cls.__name__}, got {init_args}: {error}"]
    return []


def _check_recipe(recipe: RecipeConfig | None, flag: str) -> list[str]:
    if recipe is None:
        return []
    problems = [] if recipe.epochs >= 1 else [f"`--{flag}.epochs` must be at least 1, got {recipe.epochs}."]
    problems += check_class_spec(recipe.optimizer, f"{flag}.optimizer", "optimizer")
    if recipe.lr_scheduler is not None:
        problems += check_class_spec(recipe.lr_scheduler, f"{flag}.lr_scheduler", "lr_scheduler")
    if not isinstance(recipe.trainer, dict):
        return [*problems, f"`--{flag}.trainer` must be a mapping of Trainer arguments, got {recipe.trainer!r}."]
    names, _ = _accepted_arguments(Trainer, skip=0)
    typos = sorted(set(recipe.trainer) - set(names))
    if typos:
        problems.append(f"`--{flag}.trainer` must hold lightning.Trainer arguments, got unknown {typos}.")
    return problems


def _structure(config: StudyConfig):
    """The network's pruning structure, built without weights (no download): only its shape matters here."""
    network = build_model(config.model, **structural_kwargs(config.model_kwargs))
    return network, PruningStructure(network, torch.zeros(1, *network.input_shape))


def _check_ratios(layers: dict[str, float]) -> list[str]:
    problems = []
    for pattern, ratio in layers.items():
        try:
            check_ratios({pattern: ratio})
        except ValueError as error:
            problems.append(str(error).replace("`layers", "`--masks.layers", 1))
    return problems


def _check_mask_plan(config: StudyConfig, structure) -> list[str]:
    """Problems only the network's shape reveals: patterns, ratios that prune nothing, too few or too many masks."""
    masks = config.masks
    try:
        sizes = selected_layer_sizes(structure, masks.layers)
    except ValueError as error:
        return [str(error).replace("`layers`", "`--masks.layers`", 1)]
    problems = [
        f"`--masks.layers` ratio {masks.layers.get(name, '')} prunes 0 of the {filters} filters of {name!r} "
        f"(floor(ratio x filters)), got a study with nothing to compare. Use a ratio of at least {1 / filters:.3g}."
        for name, (filters, pruned) in sizes.items()
        if pruned == 0
    ]
    if problems:
        return problems
    total = count_masks(sizes)
    if masks.sample is not None and masks.sample > total:
        problems.append(
            f"`--masks.sample` must be at most the number of distinct masks ({total:,} for {sizes}), "
            f"got {masks.sample}. Lower it, or set it to null to enumerate all {total:,}."
        )
    if masks.sample is None and total > MAX_ENUMERATED_MASKS:
        problems.append(
            f"`--masks.sample` must be set when there are more than {MAX_ENUMERATED_MASKS:,} masks to enumerate, "
            f"got null for {total:,} masks. Set `--masks.sample N` to draw N of them."
        )
    return problems


def batching_problem(config: StudyConfig, network) -> str | None:
    """Why ``batching: on`` cannot be honoured for ``network`` (None when it can, or when batching is not forced)."""
    if config.batching == "on" and not supports_batching(network):
        return (
            f"`--batching on` needs a network without BatchNorm, Dropout or buffers, got {config.model!r}. "
            "Use --batching auto or off."
        )
    return None


def _check_module(config: StudyConfig) -> list[str]:
    """Problems of `--module` (a LightningModule instead of a registry network); its mask plan is checked when the
    study is prepared, since tracing a transformers model needs a calibration example."""
    problems = check_class_spec(config.module, "module", "module")
    if config.batching == "on":
        problems.append("`--batching on` must not be used with `--module` (its masks retrain one at a time), got on.")
    if config.model_kwargs.get("weights") is not None:
        problems.append("`--model_kwargs` must be empty with `--module` (give the weights in its init_args).")
    if not config.masks.layers:
        problems.append("`--masks.layers` must map at least one layer pattern to a ratio, got {}.")
    return problems + _check_ratios(config.masks.layers)


def _check_model(config: StudyConfig) -> list[str]:
    if config.module is not None:
        return _check_module(config)
    if config.model not in available_models():
        return [f"`--model` must be one of {available_models()}, got {config.model!r}."]
    if not config.masks.layers:
        return ["`--masks.layers` must map at least one layer pattern to a ratio, got {}."]
    ratio_problems = _check_ratios(config.masks.layers)
    try:
        network, structure = _structure(config)
    except (ValueError, TypeError) as error:
        return [*ratio_problems, f"`--model_kwargs` must be accepted by {config.model!r}: {error}"]
    problems = ratio_problems or _check_mask_plan(config, structure)
    batching = batching_problem(config, network)
    return problems + ([batching] if batching else [])


def _check_sources(config: StudyConfig) -> list[str]:
    given = [
        flag
        for flag, present in (
            ("pretrain", config.pretrain is not None),
            ("checkpoint", config.checkpoint is not None),
            ("model_kwargs.weights", config.model_kwargs.get("weights") is not None),
        )
        if present
    ]
    problems = []
    if len(given) != 1 and not (config.module is not None and not given):  # a module may bring its own weights
        problems.append(
            "`--pretrain`, `--checkpoint` or `--model_kwargs.weights` must give exactly one pretrained source, "
            f"got {given or 'none'}."
        )
    if config.checkpoint is not None and not Path(config.checkpoint).is_file():
        problems.append(f"`--checkpoint` must be an existing file, got {str(config.checkpoint)!r}.")
    elif config.checkpoint is not None:
        problems += _check_checkpoint(config)
    return problems


def _check_checkpoint(config: StudyConfig) -> list[str]:
    """The checkpoint must be readable, safe, and hold this network's weights (not another model's)."""
    try:
        payload = read_checkpoint(Path(config.checkpoint), "--checkpoint")
    except ValueError as error:
        return [str(error)]
    state = network_state(payload)
    if config.module is not None or config.model not in available_models():
        return []
    trained = (payload.get("hyper_parameters") or {}) if isinstance(payload, dict) else {}
    if "model" in trained:  # a Lightning checkpoint of our modules records its network (same shapes are not enough)
        wanted = (config.model, structural_kwargs(config.model_kwargs))
        given = (trained["model"], structural_kwargs(trained.get("model_kwargs") or {}))
        if given != wanted:
            return [
                f"`--checkpoint` must hold weights of the model {_named(*wanted)}, got {str(config.checkpoint)!r}, "
                f"a checkpoint of {_named(*given)}. Use a checkpoint of this model, or set --model (and "
                "--model_kwargs) to the one it holds."
            ]
    try:
        build_model(config.model, **config.model_kwargs).load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as error:
        first = str(error).strip().splitlines()
        reason = " ".join(line.strip() for line in first[1:3]) or first[0]
        return [
            f"`--checkpoint` must hold weights of the model {config.model!r}, got {str(config.checkpoint)!r}, "
            f"which does not fit it ({reason}). Use a checkpoint of this model, or set --model to the one it holds."
        ]
    return []


def _named(model: str, kwargs: dict[str, Any]) -> str:
    return f"{model!r}" + (f" with {kwargs}" if kwargs else "")


def _check_execution(config: StudyConfig) -> list[str]:
    problems = []
    masks = config.masks
    if masks.sample is not None and masks.sample < 1:
        problems.append(f"`--masks.sample` must be at least 1 (or null to enumerate), got {masks.sample}.")
    unknown = sorted(set(masks.criteria) - set(study_criteria()))
    if unknown:
        problems.append(f"`--masks.criteria` must be among {list(study_criteria())}, got {unknown}.")
    for flag, value in (
        ("masks.calibration_batches", masks.calibration_batches),
        ("repeats", config.repeats),
        ("workers", config.workers),
        ("batch_masks", config.batch_masks),
    ):
        if value < 1:
            problems.append(f"`--{flag}` must be at least 1, got {value}.")
    if config.cpu_threads is not None and config.cpu_threads < 1:
        problems.append(f"`--cpu_threads` must be at least 1 (or null), got {config.cpu_threads}.")
    gpus = config.gpus_per_trial
    if gpus <= 0 or (gpus > 1 and not float(gpus).is_integer()):
        problems.append(f"`--gpus_per_trial` must be in (0, 1] or a whole number, got {config.gpus_per_trial}.")
    if config.cpus_per_trial <= 0:
        problems.append(f"`--cpus_per_trial` must be positive, got {config.cpus_per_trial}.")
    try:
        parse_shard(config.shard)
    except ValueError as error:
        problems.append(str(error))
    if config.accelerator in ("gpu", "cuda") and not _cuda_visible():
        problems.append(
            f"`--accelerator` must find a CUDA GPU for {config.accelerator!r}, got none visible here. "
            "Use --accelerator cpu (or auto), or run where a GPU is visible."
        )
    if config.executor not in executor_names():
        problems.append(f"`--executor` must be one of {list(executor_names())}, got {config.executor!r}.")
    if config.executor == "local" and config.address is not None:
        problems.append(f"`--address` must be null with --executor local, got {config.address!r}. Use --executor ray.")
    return problems


# lm-eval metrics where lower is better (wikitext's): the anomaly ratio and the figure read the post metric as an
# accuracy.
_LOWER_IS_BETTER = ("perplexity", "bits_per_byte")


def _check_post_metric(config: StudyConfig) -> list[str]:
    """`lm_eval` needs a causal-LM `module`; `post_metric` must be the default or a metric its tasks produce."""
    problems = []
    if config.lm_eval is not None:
        if config.module is None:
            problems.append("`--lm_eval` must be used with `--module` (a causal LM), got a registry network "
                            f"{config.model!r}.")
        problems += _check_lm_evaluation(config.lm_eval)
    if config.post_metric == DEFAULT_POST_METRIC:
        return problems
    if not isinstance(config.lm_eval, dict) or not isinstance(config.lm_eval.get("tasks"), list):
        return [*problems, f"`--post_metric` must be {DEFAULT_POST_METRIC!r}, or `lm_eval/<task>/<metric>` of the "
                           f"`--lm_eval` tasks, got {config.post_metric!r} with no --lm_eval tasks."]
    # Imported here: `evaluation/` is a leaf nothing imports at module level (it brings lm-eval, optional and heavy).
    from lightning_prune.evaluation.lm_harness import metric_problem

    problem = metric_problem(config.post_metric, config.lm_eval["tasks"], config.lm_eval.get("include_path"))
    if problem is None and config.post_metric.endswith(_LOWER_IS_BETTER):
        problem = f"{config.post_metric!r}, where lower is better (the summary reads the post metric as an accuracy)"
    if problem is not None:
        problems.append(f"`--post_metric` must be {DEFAULT_POST_METRIC!r} or a metric the `--lm_eval` tasks "
                        f"produce, got {problem}.")
    return problems


def _check_lm_evaluation(init_args: Any) -> list[str]:
    """The `LmEvaluation` arguments build (its own checks), and its `final` stage runs (the one a record keeps)."""
    # Imported here: `evaluation/` is a leaf nothing imports at module level (it brings lm-eval, optional and heavy).
    from lightning_prune.evaluation.callback import LmEvaluation

    if not isinstance(init_args, dict):
        return [f"`--lm_eval` must be a mapping of LmEvaluation arguments, got {init_args!r}."]
    try:
        evaluation = LmEvaluation(**init_args)
    except (TypeError, ValueError) as error:
        return [f"`--lm_eval` must be accepted by LmEvaluation, got {init_args}: {error}"]
    if "final" not in evaluation.stages:
        return [f"`--lm_eval.stages` must include 'final' (the results a trial records), got {evaluation.stages}."]
    return []


def _cuda_visible() -> bool:
    return torch.cuda.is_available()


def validate(config: StudyConfig) -> None:
    """Check the whole config before any compute; every problem is collected and reported at once.

    Raises:
        ValueError: listing every problem, each naming its flag (the first line alone when there is one).
    """
    problems = _check_model(config)
    problems += check_class_spec(config.data, "data", "data")
    problems += _check_sources(config)
    problems += _check_recipe(config.pretrain, "pretrain")
    problems += _check_recipe(config.retrain, "retrain")
    problems += _check_execution(config)
    problems += _check_post_metric(config)
    if len(problems) == 1:
        raise ValueError(problems[0])
    if problems:
        raise ValueError(f"Invalid study config ({len(problems)} problems):\n  " + "\n  ".join(problems))
