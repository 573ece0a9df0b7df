"""lm-evaluation-harness in process: zero-shot accuracy of our own (pruned) networks, as the pruning papers report it.

`evaluate_lm` hands the network object and its tokenizer to lm-eval's `HFLM` (the class behind `--model hf`), so
models whose layers have different sizes after pruning, which `from_pretrained` cannot rebuild, are evaluated the
same way as a `pruned_hf/` folder through lm-eval's CLI. lm-eval (the optional `lm` extra) is imported here only,
and only when a function runs.

Task names are checked before any compute: an unknown one is refused with the close names lm-eval knows. The
shipped `lightning_prune_tiny_lm` task (`lm_tasks/`, 40 four-way questions in the vocabulary of the shipped tiny
corpus) runs offline; the folder is always on the include path.

LLM-Pruner's table reports BoolQ, PIQA, HellaSwag, WinoGrande, ARC-e, ARC-c and OBQA (`LLM_PRUNER_TASKS`); its
tracker asks (#25) whether `acc` or `acc_norm`: both are returned (and logged) where the task has them.
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path
from typing import Any

from torch import nn

LM_TASKS_DIR = Path(__file__).resolve().parent / "lm_tasks"  # lm-eval's --include_path for the shipped task
TINY_LM_TASK = "lightning_prune_tiny_lm"
LLM_PRUNER_TASKS = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
_MULTIPLE_CHOICE_DEFAULT = ("acc", "acc_norm")


def _include_paths(include_path: str | Path | list[str | Path] | None) -> list[str]:
    extra = [] if include_path is None else [include_path] if isinstance(include_path, str | Path) else include_path
    return [str(LM_TASKS_DIR), *(str(path) for path in extra)]


@lru_cache(maxsize=4)
def _task_manager(include_paths: tuple[str, ...]):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include_paths))


def task_manager(include_path: str | Path | list[str | Path] | None = None):
    """lm-eval's `TaskManager` over its built-in tasks, the shipped tiny task and `include_path` (cached)."""
    return _task_manager(tuple(_include_paths(include_path)))


def check_tasks(tasks: list[str], include_path: str | Path | list[str | Path] | None = None) -> None:
    """Raise unless every name is a task, group or tag lm-eval knows (the message lists close names).

    Raises:
        ValueError: On an empty list or an unknown name.
    """
    if not tasks or not all(isinstance(task, str) and task for task in tasks):
        raise ValueError(f"`tasks` must be a non-empty list of lm-eval task names, got {tasks!r}.")
    known = task_manager(include_path).all_tasks
    for task in tasks:
        if task not in known:
            close = difflib.get_close_matches(task, known, n=5, cutoff=0.6)
            raise ValueError(f"`tasks` must name lm-eval tasks, got {task!r}, which lm-eval does not know; close "
                             f"names: {close or 'none'} (`lm_eval ls tasks` lists all; local tasks need "
                             "`include_path`).")


def task_metrics(task: str, include_path: str | Path | list[str | Path] | None = None) -> list[str]:
    """The metric names a task reports (its YAML's `metric_list`; a multiple-choice task without one: acc and
    acc_norm). For a group or tag, the metrics of every task in it."""
    manager = task_manager(include_path)
    entry = manager.task_index.get(task)
    if entry is None:
        return []
    config = entry.cfg or {}
    if "metric_list" in config or "output_type" in config:
        listed = [item["metric"] for item in config.get("metric_list", []) if isinstance(item.get("metric"), str)]
        if listed:
            return listed
        return list(_MULTIPLE_CHOICE_DEFAULT) if config.get("output_type") == "multiple_choice" else []
    members = [name for name, other in manager.task_index.items() if task in (other.tags or set())]
    members += [item for item in config.get("task", []) if isinstance(item, str)]
    return sorted({metric for member in members if member != task for metric in task_metrics(member, include_path)})


def metric_problem(name: str, tasks: list[str], include_path: str | Path | list[str | Path] | None = None
                   ) -> str | None:
    """Why `name` (`lm_eval/<task>/<metric>`, as logged) is not a metric `tasks` produce; None when it is."""
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != "lm_eval":
        return f"an lm-eval metric must be named `lm_eval/<task>/<metric>`, got {name!r}"
    task, metric = parts[1], parts[2]
    if task not in tasks:
        return f"{name!r} names task {task!r}, which is not among the evaluated `tasks` {tasks}"
    produced = task_metrics(task, include_path)
    if metric not in produced:
        return f"{name!r} names metric {metric!r}, which task {task!r} does not produce (it reports {produced})"
    return None


def language_model(network_or_module: nn.Module) -> nn.Module:
    """The transformers model to evaluate: the object itself, or a LightningModule's `model` (as `CausalLM`)."""
    if callable(getattr(network_or_module, "prepare_inputs_for_generation", None)):
        return network_or_module
    inner = getattr(network_or_module, "model", None)
    if isinstance(inner, nn.Module) and callable(getattr(inner, "prepare_inputs_for_generation", None)):
        return inner
    raise ValueError(f"`network_or_module` must be a transformers causal LM or a module holding one as `model`, "
                     f"got {type(network_or_module).__name__}.")


def _load_tokenizer(tokenizer):
    if isinstance(tokenizer, str | Path):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(tokenizer))
    return tokenizer


def flatten_results(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """`{task: {metric: value}}` from lm-eval's `results`: the `<metric>,<filter>` entries, filter dropped, no
    stderr (entries such as `alias` or `sample_len` are not metrics)."""
    flat: dict[str, dict[str, float]] = {}
    for task, values in results.items():
        for key, value in values.items():
            metric = key.split(",")[0]
            if "," not in key or "_stderr" in metric or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            flat.setdefault(task, {})[metric] = float(value)
    return flat


def logged_names(results: dict[str, dict[str, float]], prefix: str = "") -> dict[str, float]:
    """`{f"{prefix}lm_eval/<task>/<metric>": value}`, the names logged to W&B and CSV."""
    return {f"{prefix}lm_eval/{task}/{metric}": value for task, metrics in results.items()
            for metric, value in metrics.items()}


def evaluate_lm(network_or_module: nn.Module, tokenizer, tasks: list[str], batch_size: int = 8,
                limit: int | float | None = None, num_fewshot: int | None = None,
                include_path: str | Path | list[str | Path] | None = None) -> dict[str, dict[str, float]]:
    """Evaluate a causal LM with lm-evaluation-harness in this process.

    Args:
        network_or_module: A transformers causal LM (pruned or not, per-layer sizes allowed) or a LightningModule
            holding one as `model` (`CausalLM`). Evaluated in eval mode, on its own device; its training flags
            are restored afterwards.
        tokenizer: Its tokenizer, or a folder / Hub id to load one from.
        tasks: lm-eval task, group or tag names (e.g. `LLM_PRUNER_TASKS`, or `TINY_LM_TASK`).
        batch_size: Requests per forward pass.
        limit: At most this many documents per task (a fraction in (0, 1) of each), for quick checks.
        num_fewshot: Few-shot examples (None: the task's default, zero-shot for the tasks above).
        include_path: Extra folders of task YAMLs (the shipped tiny task is always included).

    Returns:
        `{task: {metric: value}}`, e.g. `{"piqa": {"acc": 0.77, "acc_norm": 0.78}}`.

    Raises:
        ValueError: If a task name is unknown (before any compute), or the network holds no causal LM.
    """
    check_tasks(tasks, include_path)
    model = language_model(network_or_module)
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from lightning_prune.pruning.modes import modes_restored

    with modes_restored(model):
        harness_model = HFLM(pretrained=model, tokenizer=_load_tokenizer(tokenizer), batch_size=batch_size)
        output = lm_eval.simple_evaluate(
            model=harness_model, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
            task_manager=task_manager(include_path), log_samples=False,
        )
    return flatten_results(output["results"])
