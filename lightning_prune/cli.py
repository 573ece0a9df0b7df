"""`lightning-prune fit|validate|test|predict|study --config X.yaml`.

Model and data are given in subclass mode (`class_path` + `init_args`), so any LightningModule and DataModule can be
driven, not only ours. Every run logs to W&B (offline unless `WANDB_MODE=online` or the logger's `offline: false`) and
to a local `metrics.csv`; the resolved config goes to both.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jsonargparse import set_parsing_settings
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from typing_extensions import override

from lightning_prune._config_guard import ConfigWalker, Group, check_argv, parser_hints
from lightning_prune._errors import check_same_model, one_line_error
from lightning_prune._files import read_checkpoint
from lightning_prune._wandb import finish_wandb
from lightning_prune.callbacks._checkpoints import use_atomic_checkpoints

_RUNS_DIR = "runs"
_SHOW_TRACEBACK = "LIGHTNING_PRUNE_TRACEBACK"


def resolve_class_in(class_path: str, bases: tuple[type, ...]) -> type:
    """The class ``class_path`` names (a short name among the subclasses of ``bases``, as jsonargparse resolves it).

    Raises:
        ValueError: unless it is a subclass of one of ``bases``.
    """
    from jsonargparse._typehints import resolve_class_path_by_name
    from jsonargparse._util import import_object

    name = class_path if "." in class_path else resolve_class_path_by_name(bases, class_path)
    try:
        found = import_object(name)
    except Exception as error:  # noqa: BLE001  (nothing importable by that name)
        raise ValueError(f"nothing importable is called {class_path!r}") from error
    if not (inspect.isclass(found) and issubclass(found, bases)):
        raise ValueError(f"{class_path!r} is not a subclass of {bases}")
    return found


def default_loggers(name: str = "lightning-prune") -> list[dict[str, Any]]:
    """CSV first (checkpoints land in its version folder), then W&B, offline unless asked to go online."""
    offline = os.environ.get("WANDB_MODE", "offline") != "online"
    return [
        {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": _RUNS_DIR, "name": name},
        },
        {
            "class_path": "lightning.pytorch.loggers.WandbLogger",
            "init_args": {"save_dir": _RUNS_DIR, "project": "lightning-prune", "offline": offline},
        },
    ]


class ConfigToLoggersCallback(SaveConfigCallback):
    """Saves `config.yaml` to the log folder (overwriting) and sends the resolved config to W&B."""

    @override
    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        config = self.config.as_dict()
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update({"cli": config}, allow_val_change=True)


class LightningPruneCLI(LightningCLI):
    """LightningCLI with this project's defaults: subclass mode, fresh optimizers, loggers, config overwrite."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        # Parse errors are raised (not printed with a 50-line usage) so that `main` can say them in one line.
        no_exit = {"exit_on_error": False}
        # A second guard behind `parse_arguments`' check: a class spec inside a free-form value stays a dict.
        set_parsing_settings(instantiate_subclass_spec_in_any=False)
        super().__init__(
            model_class=None,
            datamodule_class=None,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=ConfigToLoggersCallback,
            save_config_kwargs={"overwrite": True},
            # Modules build their optimizers in `configure_optimizers` (pruning replaces parameters).
            auto_configure_optimizers=False,
            parser_kwargs={
                "description": __doc__.splitlines()[0],
                **no_exit,
                **{subcommand: dict(no_exit) for subcommand in LightningCLI.subcommands()},
            },
            args=args,
            run=run,
        )

    @override
    def _parse_ckpt_path(self) -> None:
        # LightningCLI puts the checkpoint's hyperparameters over the config's model here: refuse a checkpoint of
        # another network instead of training it silently, and refuse an unreadable or unsafe file in one line.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            checkpoint = read_checkpoint(Path(ckpt_path), "--ckpt_path")
            check_same_model(checkpoint.get("hyper_parameters") or {}, self.config[subcommand].get("model"), ckpt_path)
        super()._parse_ckpt_path()

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # No code from configs: every class_path of the raw input is checked before jsonargparse builds anything.
        argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
        subparsers = getattr(self, "_subcommand_parsers", None)  # absent with run=False: no subcommands
        subcommand = next((word for word in argv if not word.startswith("-")), None)
        if subparsers and subcommand in subparsers:
            parser_of_args, argv = subparsers[subcommand], argv[argv.index(subcommand) + 1 :]
        else:
            parser_of_args = parser
        check_argv(ConfigWalker(Group(parser_hints(parser_of_args)), resolve_class_in), argv)
        super().parse_arguments(parser, args)

    @override
    def before_instantiate_classes(self) -> None:
        # `--trainer.default_root_dir X` moves the default loggers too (they would write to `runs/` otherwise), so
        # that "write elsewhere with --trainer.default_root_dir" works for every file of a run.
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        root = config.get("trainer.default_root_dir")
        loggers = config.get("trainer.logger")
        if root in (None, _RUNS_DIR) or not isinstance(loggers, list):
            return
        for logger in loggers:
            init_args = getattr(logger, "init_args", None)
            if init_args is not None and init_args.get("save_dir") == _RUNS_DIR:
                init_args["save_dir"] = str(root)

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        use_atomic_checkpoints(trainer)  # a full disk or a kill never leaves half a checkpoint
        return trainer

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"trainer.logger": default_loggers(), "trainer.default_root_dir": _RUNS_DIR})


def _finish_wandb_runs(trainer: Trainer) -> None:
    # A second CLI call in one process (tests, notebooks) would otherwise log into the first one's run.
    for logger in trainer.loggers:
        finish_wandb(logger)


def _fail(message: str) -> None:
    if os.environ.get(_SHOW_TRACEBACK):
        raise
    print(f"lightning-prune: error: {message}", file=sys.stderr)
    print(f"(set {_SHOW_TRACEBACK}=1 for the full traceback)", file=sys.stderr)
    raise SystemExit(2)


@contextlib.contextmanager
def _private_temp_dir() -> Iterator[None]:
    """A temporary folder of this command only, removed at the end with what W&B's service leaves in it (its
    folder and stats socket, which it otherwise leaves in /tmp after every run)."""
    folder = tempfile.mkdtemp(prefix="lightning-prune-")
    saved, tempfile.tempdir = os.environ.get("TMPDIR"), None
    os.environ["TMPDIR"] = folder
    try:
        yield
    finally:
        if "wandb" in sys.modules:
            sys.modules["wandb"].teardown()  # stops the service, which owns the files there
        if saved is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved
        tempfile.tempdir = None
        shutil.rmtree(folder, ignore_errors=True)


def main(args: list[str] | None = None) -> None:
    """Console entry point. `study` goes to the study runner; everything else to LightningCLI.

    Every failure a user can fix ends as one line naming the argument or file and what to do (exit code 2);
    Ctrl-C during a study says what was saved and how to resume (exit code 130).
    """
    argv = list(sys.argv[1:] if args is None else args)
    try:
        with _private_temp_dir():
            _run(argv, args)
    except KeyboardInterrupt as interrupt:
        print(f"lightning-prune: interrupted: {interrupt or 'Ctrl-C'}", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as error:  # noqa: BLE001  (what is not one of ours is re-raised by `one_line_error`)
        _fail(one_line_error(error, argv[0] if argv else "fit"))


def _run(argv: list[str], args: list[str] | None) -> None:
    if argv[:1] == ["study"]:
        from lightning_prune.study.runner import study_main

        study_main(argv[1:])
    else:
        # args=None lets LightningCLI read sys.argv itself (it warns when given both).
        cli = LightningPruneCLI(args=None if args is None else argv)
        _finish_wandb_runs(cli.trainer)


if __name__ == "__main__":
    main()
