"""`lightning-prune study --config configs/study/<name>.yaml [--shard i/n] [--workers N] [--executor ray ...]`.

Every field of `StudyConfig` is a flag (nested ones dotted: ``--masks.sample 100``, ``--retrain.epochs 3``); the
field docstrings are the ``--help``. Flags given after ``--config`` override the file.

The ``{class_path, init_args}`` slots (``--data``, ``--pretrain.optimizer``, ``--retrain.lr_scheduler``, ...) are
applied here, after the rest is parsed: jsonargparse treats a plain dict holding ``class_path`` as a subclass spec
and fails on it (``'dict' object has no attribute 'init_args'``), and puts ``--data.init_args.x`` beside
``init_args`` instead of inside it. A whole value replaces the slot (``--data '{class_path: ..., init_args: ...}'``);
a dotted one sets one key (``--retrain.optimizer.init_args.lr 0.02``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

from lightning_prune._config_guard import ConfigWalker, Group, Slot, check_argv, parser_hints
from lightning_prune.study.spec import StudyConfig, resolve_class

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
    import torch
    from lightning.pytorch import LightningDataModule, LightningModule

    bases = {
        "data": LightningDataModule,
        "module": LightningModule,
        "optimizer": torch.optim.Optimizer,
        "lr_scheduler": torch.optim.lr_scheduler.LRScheduler,
    }
    slots = {(name,): Slot((bases[name],), init_args_are_data=True) for name in ("data", "module")}
    for recipe in ("pretrain", "retrain"):
        for name in ("optimizer", "lr_scheduler"):
            slots[(recipe, name)] = Slot((bases[name],), init_args_are_data=True)
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
    from lightning_prune.study.runner import run_study

    run_study(parse_config(argv))
