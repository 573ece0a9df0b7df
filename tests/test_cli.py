"""The command line as a user meets it: configs parse, the quickstart runs, mistakes give one clear message."""

import csv
import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_prune.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LIGHTNING_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if "study" not in p.relative_to(CONFIGS).parts)


@pytest.mark.parametrize("config", LIGHTNING_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_cli_every_config_parses(config, capsys):
    subcommand = "predict" if "dycoke" in config.parts else "fit"
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--config", str(config), "--print_config"])
    assert exit_info.value.code in (None, 0)
    printed = capsys.readouterr().out
    assert "class_path" in printed and "trainer:" in printed


def _read_metrics(root: Path) -> list[dict[str, str]]:
    files = list(root.rglob("metrics.csv"))
    assert len(files) == 1, files
    with files[0].open() as f:
        return list(csv.DictReader(f))


def test_cli_quickstart_runs_end_to_end_and_logs_locally_and_to_wandb(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "quick.yaml"  # the shipped quickstart, shortened to 1 pretrain + 1 retrain epoch
    config.write_text((CONFIGS / "quickstart.yaml").read_text().replace("prune_at_epoch: 10", "prune_at_epoch: 1"))
    args = ["fit", "--config", str(config), "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false",
            "--trainer.limit_train_batches=10"]
    main(args)
    rows = _read_metrics(tmp_path / "runs")
    logged = {key for row in rows for key, value in row.items() if value}
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "phase"} <= logged
    assert {"pruned/train_loss", "prune/params_before", "prune/params_after"} <= logged
    params = {key: float(row[key]) for row in rows for key in ("prune/params_before", "prune/params_after") if row[key]}
    assert params["prune/params_after"] < params["prune/params_before"]
    assert list((tmp_path / "runs").rglob("offline-run-*")), "no W&B offline run was written"
    assert list((tmp_path / "runs").rglob("config.yaml"))
    main(args)  # a second run into the same folders must not fail on the saved config


def test_cli_wrong_yaml_key_is_one_clear_message(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text((CONFIGS / "quickstart.yaml").read_text().replace("max_epochs:", "max_epoch:"))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config)])
    assert exit_info.value.code == 2
    assert "max_epoch" in capsys.readouterr().err


def test_cli_unknown_model_is_one_clear_message(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "recipes" / "lenet5_mnist.yaml"), "--model.init_args.model=lenet7"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "lightning-prune: error: `model` must be one of" in err and "lenet7" in err
    assert "Traceback" not in err and "Union subtypes" not in err


def test_cli_missing_dataset_is_one_clear_message(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "recipes" / "lenet5_mnist.yaml"), "--data.init_args.download=false",
              f"--data.init_args.root={tmp_path / 'nowhere'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "train-images-idx3-ubyte" in err


_RESUME_CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  enable_progress_bar: false
  limit_train_batches: 4
  limit_val_batches: 1
  logger:
    - class_path: lightning.pytorch.loggers.CSVLogger
      init_args: {save_dir: runs, name: NAME}
model:
  class_path: lightning_prune.modules.ImageClassifier
  init_args:
    model: lenet5_mini
    optimizer:
      class_path: torch.optim.SGD
      init_args: {lr: 0.05, momentum: 0.9}
data:
  class_path: lightning_prune.data.MNISTMiniDataModule
  init_args: {batch_size: 32, eval_batch_size: 256}
"""


def test_cli_resumed_fit_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    """`fit --ckpt_path` continues with the shuffle of the epoch it resumes at: metrics.csv equals a fit that was
    never interrupted, value for value."""
    monkeypatch.chdir(tmp_path)

    def fit(name: str, epochs: int, *extra: str) -> list[dict[str, str]]:
        config = tmp_path / f"{name}.yaml"
        config.write_text(_RESUME_CONFIG.replace("NAME", name))
        main(["fit", "--config", str(config), f"--trainer.max_epochs={epochs}", *extra])
        return _read_metrics(tmp_path / "runs" / name)

    straight = fit("straight", 3)
    fit("interrupted", 2)
    (last,) = (tmp_path / "runs" / "interrupted").rglob("epoch=1-*.ckpt")
    resumed = fit("resumed", 3, f"--ckpt_path={last}")
    assert [row["epoch"] for row in resumed] == ["2"] * len(resumed) and resumed
    assert resumed == [row for row in straight if row["epoch"] == "2"]


def _one_line_error(capsys, args: list[str]) -> str:
    """Run the CLI expecting a usage error; return the one line it printed (checked to be one line)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()[-2:]
    assert "Traceback" not in err and lines[1].startswith("(set LIGHTNING_PRUNE_TRACEBACK=1"), lines
    assert lines[0].startswith("lightning-prune: error: ")
    return lines[0].removeprefix("lightning-prune: error: ")


def _tiny_fit_config(tmp_path: Path, model: str = "lenet5_mini", name: str = "run") -> str:
    config = tmp_path / f"{name}.yaml"
    config.write_text(_RESUME_CONFIG.replace("NAME", name).replace("model: lenet5_mini", f"model: {model}"))
    return str(config)


def test_cli_wrong_type_is_one_line_naming_the_flag(tmp_path, capsys):
    config = _tiny_fit_config(tmp_path)
    line = _one_line_error(capsys, ["fit", "--config", config, "--trainer.max_epochs", "two"])
    assert line == "`--trainer.max_epochs` must be an integer or null, got 'two' (a string)."


def test_cli_typo_inside_init_args_is_one_line_naming_the_class(tmp_path, capsys):
    config = _tiny_fit_config(tmp_path)
    line = _one_line_error(capsys, ["fit", "--config", config, "--model.init_args.modell", "lenet5_mini"])
    assert line == (
        "`--model.init_args` must hold arguments of lightning_prune.modules.classifier.ImageClassifier (model, "
        "model_kwargs, optimizer, lr_scheduler, retrain_optimizer, retrain_lr_scheduler, label_smoothing, "
        "input_shape), got unknown 'modell'."
    )


def test_cli_callback_message_without_backtick_is_not_a_union_report(tmp_path, capsys):
    config = tmp_path / "both.yaml"
    config.write_text((CONFIGS / "quickstart.yaml").read_text().replace(
        "prune_at_epoch: 10", "prune_at_epoch: 10\n        prune_at: start"))  # fmt: skip
    line = _one_line_error(capsys, ["fit", "--config", str(config)])
    assert "prune_at" in line and "prune_at_epoch" in line and "Union" not in line and "Subtypes" not in line


def test_cli_missing_gpu_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    line = _one_line_error(capsys, ["fit", "--config", _tiny_fit_config(tmp_path), "--trainer.accelerator", "gpu"])
    assert line.startswith("`--trainer.accelerator` asks for a GPU, got none visible here (")
    assert line.endswith("Use --trainer.accelerator cpu (or auto), or run where a CUDA GPU is visible.")


@pytest.mark.parametrize(("code", "remedy"), [(errno.EACCES, "Check its permissions"), (errno.ENOSPC, "Free space")])
def test_cli_unwritable_run_folder_is_one_line(tmp_path, capsys, monkeypatch, code, remedy):
    monkeypatch.chdir(tmp_path)

    def refuse(self, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path / "runs" / "run"))

    monkeypatch.setattr("lightning.pytorch.loggers.CSVLogger.log_hyperparams", refuse)
    line = _one_line_error(capsys, ["fit", "--config", _tiny_fit_config(tmp_path), "--trainer.max_epochs=1"])
    assert line.startswith(f"`{tmp_path / 'runs' / 'run'}` could not be written: {os.strerror(code)}. {remedy}")


def _fitted_checkpoint(tmp_path: Path, model: str = "lenet5_mini") -> Path:
    main(["fit", "--config", _tiny_fit_config(tmp_path, model, "first"), "--trainer.max_epochs=1"])
    (checkpoint,) = (tmp_path / "runs" / "first").rglob("*.ckpt")
    return checkpoint


def test_cli_checkpoint_of_another_model_is_refused_naming_both(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint = _fitted_checkpoint(tmp_path, "lenet5_mini_w20")
    capsys.readouterr()
    config = _tiny_fit_config(tmp_path, "lenet5_mini")
    line = _one_line_error(capsys, ["fit", "--config", config, f"--ckpt_path={checkpoint}"])
    assert line == (
        "`--ckpt_path` must hold a checkpoint of the config's model ImageClassifier(model='lenet5_mini'), got "
        f"{checkpoint}, a checkpoint of ImageClassifier(model='lenet5_mini_w20'). Use a checkpoint of this model, "
        "or the config it was trained with."
    )


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("kind", ["truncated", "random", "malicious"])
def test_cli_bad_checkpoint_file_is_one_line_without_torch_advice(tmp_path, capsys, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / f"{kind}.ckpt"
    if kind == "truncated":
        good = _fitted_checkpoint(tmp_path).read_bytes()
        capsys.readouterr()
        bad.write_bytes(good[: len(good) // 2])
    elif kind == "random":
        bad.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        torch.save({"state_dict": _RunsCode()}, bad)
    line = _one_line_error(capsys, ["fit", "--config", _tiny_fit_config(tmp_path), f"--ckpt_path={bad}"])
    if kind == "malicious":
        assert line == (
            f"`--ckpt_path` must hold only tensors and plain Python values, got {bad}, whose loading would call "
            "posix.system: refused. Use only checkpoints you trust, saved as plain state dicts."
        )
        assert not (tmp_path / "pwned").exists()
    else:
        assert line == (
            f"`--ckpt_path` must be a complete checkpoint written by torch.save, got {bad}, which cannot be read "
            "(truncated, or not a checkpoint). Use another one, e.g. an earlier epoch's."
        )
    assert "weights_only" not in line
