"""The command line as a user meets it: configs parse, the quickstart runs, mistakes give one clear message."""

import csv
from pathlib import Path

import pytest

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
