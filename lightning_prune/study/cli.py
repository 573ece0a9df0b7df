"""`lightning-prune study --config configs/study/<name>.yaml [--shard i/n] [--workers N] [--executor ray ...]`.

Every field of `StudyConfig` is a flag (nested ones dotted: ``--masks.sample 100``, ``--retrain.epochs 3``); the
field docstrings are the ``--help``. Flags given after ``--config`` override the file.
"""

from __future__ import annotations

import dataclasses

from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

from lightning_prune.study.spec import StudyConfig


def build_parser() -> ArgumentParser:
    """The study's argument parser (also used to check the shipped YAML files)."""
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(
        prog="lightning-prune study",
        description="Oracle-pruning correlation study: prune one pretrained model with many masks, retrain each, "
        "and correlate the pruned train loss with the final test accuracy and loss.",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="A study YAML (configs/study/*.yaml).")
    parser.add_class_arguments(StudyConfig, fail_untyped=True)
    return parser


def parse_config(argv: list[str]) -> StudyConfig:
    """Parse command-line arguments (and the ``--config`` file) into a `StudyConfig`."""
    parser = build_parser()
    namespace = parser.instantiate(parser.parse_args(argv))
    return StudyConfig(**{field.name: namespace[field.name] for field in dataclasses.fields(StudyConfig)})


def study_main(argv: list[str]) -> None:
    """Entry point of ``lightning-prune study`` (``argv`` without the word ``study``)."""
    from lightning_prune.study.runner import run_study

    run_study(parse_config(argv))
