"""Run a study end to end, from Python (`run_study`) or the command line (`study_main`): check ``study_dir``,
prepare, run the pending trials of this shard on the chosen path with a progress bar, and report (``results.csv``
always; ``summary.json``, figures and the W&B summary run once every trial of the study is done).

`lightning-prune study --config configs/study/<name>.yaml [--shard i/n] [--workers N] [--executor ray ...]`: every
field of `StudyConfig` is a flag (nested ones dotted: ``--masks.sample 100``, ``--retrain.epochs 3``); the field
docstrings are the ``--help``. Flags given after ``--config`` override the file.

The ``{class_path, init_args}`` slots (``--data``, ``--pretrain.optimizer``, ``--retrain.lr_scheduler``, ...) are
applied here, after the rest is parsed: jsonargparse treats a plain dict holding ``class_path`` as a subclass spec
and fails on it (``'dict' object has no attribute 'init_args'``), and puts ``--data.init_args.x`` beside
``init_args`` instead of inside it. A whole value replaces the slot (``--data '{class_path: ..., init_args: ...}'``);
a dotted one sets one key (``--retrain.optimizer.init_args.lr 0.02``).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings
from lightning.pytorch.utilities import rank_zero_info
from tqdm.auto import tqdm

from lightning_prune._config_guard import ConfigWalker, Group, Slot, check_argv, parser_hints
from lightning_prune.study.executors import run_pending
from lightning_prune.study.prepare import check_study_dir, ensure_masks, ensure_pretrained, exclusive, plan_trials
from lightning_prune.study.report import write_report
from lightning_prune.study.run import cpu_threads
from lightning_prune.study.spec import StudyConfig, parse_shard, resolve_class, trial_path
from lightning_prune.study.validation import SLOT_BASES, validate


def run_study(config: StudyConfig) -> dict[str, Any] | None:
    """Run (or resume) a study.

    Returns:
        The summary when every trial of the study is finished, else None.

    Raises:
        ValueError: for an invalid config, or a ``study_dir`` holding a study of another config (before compute).
        StudyInterrupted: on Ctrl-C (a KeyboardInterrupt saying how many trials finished and how to resume).
    """
    validate(config)
    with cpu_threads(config.cpu_threads):
        try:
            return _run_study(config)
        except (KeyboardInterrupt, SystemExit) as error:
            if isinstance(error, SystemExit) and not _is_lightning_interrupt(error):
                raise
            raise StudyInterrupted(_interrupted_message(config)) from None


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C during a study; the message says what is saved and how to resume."""


def _is_lightning_interrupt(error: SystemExit) -> bool:
    # Lightning turns Ctrl-C inside a fit into sys.exit(1), raised while handling the KeyboardInterrupt.
    return error.code == 1 and isinstance(error.__context__, KeyboardInterrupt)


def _interrupted_message(config: StudyConfig) -> str:
    study_dir = Path(config.study_dir)
    if not (study_dir / "masks.json").is_file():
        return (
            f"Study {config.name!r} interrupted while preparing {study_dir}; finished pretraining epochs are kept. "
            "Rerun the same command to resume."
        )
    finished = len(list((study_dir / "trials").glob("*.json")))
    return (
        f"Study {config.name!r} interrupted: {finished} trials finished and saved in {study_dir / 'trials'}. "
        "Rerun the same command to resume; finished trials are not run again."
    )


def _run_study(config: StudyConfig) -> dict[str, Any] | None:
    study_dir = Path(config.study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    with exclusive(study_dir):
        check_study_dir(config)
        ensure_pretrained(config)
        entries = ensure_masks(config)
    if config.prepare_only:
        rank_zero_info(f"Study {config.name!r} prepared in {study_dir}: {len(entries)} masks.")
        return None
    trials = plan_trials(config, entries)
    shard_index, shard_count = parse_shard(config.shard)
    mine = [t for t in trials if t.index % shard_count == shard_index]
    pending = [t for t in mine if not trial_path(study_dir, t.trial_id).is_file()]
    rank_zero_info(
        f"Study {config.name!r}: {len(entries)} masks x {config.repeats} repeats = {len(trials)} trials; "
        f"this run: {len(mine)} ({len(mine) - len(pending)} already done)."
    )
    if pending:
        with tqdm(total=len(mine), initial=len(mine) - len(pending), desc=config.name, unit="trial",
                  file=sys.stderr, dynamic_ncols=True) as bar:  # fmt: skip
            run_pending(config, pending, bar.update)
    return write_report(config, trials)


# ---------------------------------------------------------------------------------------------- command line
_CLASS_SLOTS = ("data", "pretrain.optimizer", "pretrain.lr_scheduler", "retrain.optimizer", "retrain.lr_scheduler")


def build_parser() -> ArgumentParser:
    """The study's argument parser (also used to check the shipped YAML files)."""
    # A class spec inside a free-form value (model_kwargs, a recipe's trainer) stays a dict: nothing is built.
    set_parsing_settings(docstring_parse_attribute_docstrings=True, instantiate_subclass_spec_in_any=False)
    parser = ArgumentParser(
        prog="lightning-prune study",
        description="Oracle-pruning correlation study: prune one pretrained model with many masks, retrain each, "
        "and correlate the pruned train loss with the final test accuracy and loss.",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="A study YAML (configs/study/*.yaml).")
    parser.add_class_arguments(StudyConfig, fail_untyped=True)
    return parser


def _slot_of(flag: str) -> tuple[str, str] | None:
    """``--retrain.optimizer.init_args.lr`` -> ``("retrain.optimizer", "init_args.lr")``; None for other flags."""
    name = flag.removeprefix("--")
    for slot in _CLASS_SLOTS:
        if name == slot or name.startswith(f"{slot}."):
            return slot, name[len(slot) + 1 :]
    return None


def split_class_slot_flags(argv: list[str]) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Take the class-slot flags out of ``argv``.

    Returns:
        The remaining arguments, and ``(slot, key within the slot or "", raw value)`` in the order given.

    Raises:
        ValueError: for a class-slot flag without a value.
    """
    rest: list[str] = []
    overrides: list[tuple[str, str, str]] = []
    position = 0
    while position < len(argv):
        argument = argv[position]
        flag, has_value, value = argument.partition("=")
        found = _slot_of(flag) if flag.startswith("--") else None
        if found is None:
            rest.append(argument)
            position += 1
            continue
        if not has_value:
            if position + 1 >= len(argv):
                raise ValueError(f"`{flag}` must be followed by a value, got nothing.")
            value = argv[position + 1]
            position += 1
        position += 1
        overrides.append((*found, value))
    return rest, overrides


def _apply(spec: dict[str, Any] | None, slot: str, key: str, raw: str) -> dict[str, Any] | None:
    flag = f"--{slot}{'.' + key if key else ''}"
    value = yaml.safe_load(raw)
    if not key:
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"`{flag}` must be a mapping with `class_path` and `init_args`, got {raw!r}.")
        return value
    spec = {"init_args": {}, **(spec or {})}
    if key == "class_path":
        if value != spec.get("class_path"):
            spec["init_args"] = {}  # another class: the old arguments belong to the old one
        spec["class_path"] = value
        return spec
    head, _, name = key.partition(".")
    if head != "init_args" or not name or "." in name:
        raise ValueError(f"`{flag}` must be `--{slot}.class_path` or `--{slot}.init_args.<name>`, got {flag!r}.")
    spec["init_args"] = {**(spec.get("init_args") or {}), name: value}
    return spec


def apply_class_slot_flags(config: StudyConfig, overrides: list[tuple[str, str, str]]) -> StudyConfig:
    """``config`` with the class-slot flags applied in order.

    Raises:
        ValueError: for a malformed value, or a recipe flag when that recipe is null.
    """
    for slot, key, raw in overrides:
        if slot == "data":
            config = dataclasses.replace(config, data=_apply(config.data, slot, key, raw))
            continue
        recipe_name, field_name = slot.split(".")
        recipe = getattr(config, recipe_name)
        if recipe is None:
            raise ValueError(f"`--{slot}` needs a `--{recipe_name}` recipe, got `{recipe_name}: null`.")
        updated = _apply(getattr(recipe, field_name), slot, key, raw)
        config = dataclasses.replace(config, **{recipe_name: dataclasses.replace(recipe, **{field_name: updated})})
    return config


def _class_slots() -> dict[tuple[str, ...], Slot]:
    """The places of a study config that take a class; the study builds each with its init_args as data."""
    slots = {(name,): Slot((SLOT_BASES[name],), init_args_are_data=True) for name in ("data", "module")}
    for recipe in ("pretrain", "retrain"):
        for name in ("optimizer", "lr_scheduler"):
            slots[(recipe, name)] = Slot((SLOT_BASES[name],), init_args_are_data=True)
    return slots


def _resolve(class_path: str, bases: tuple[type, ...]) -> type:
    return resolve_class(class_path, bases[0])


def check_no_code(parser: ArgumentParser, argv: list[str]) -> None:
    """Refuse any ``class_path`` outside the study's class slots, in the files and flags, before parsing.

    Raises:
        ValueError: naming the place in the config.
    """
    expected = "data, module, pretrain/retrain optimizer and lr_scheduler"
    check_argv(ConfigWalker(Group(parser_hints(parser)), _resolve, _class_slots(), expected), argv)


def parse_config(argv: list[str]) -> StudyConfig:
    """Parse command-line arguments (and the ``--config`` file) into a `StudyConfig`."""
    parser = build_parser()
    check_no_code(parser, argv)
    rest, overrides = split_class_slot_flags(argv)
    namespace = parser.instantiate(parser.parse_args(rest))
    config = StudyConfig(**{field.name: namespace[field.name] for field in dataclasses.fields(StudyConfig)})
    return apply_class_slot_flags(config, overrides)


def study_main(argv: list[str]) -> None:
    """Entry point of ``lightning-prune study`` (``argv`` without the word ``study``)."""
    run_study(parse_config(argv))
