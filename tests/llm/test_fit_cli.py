"""`lightning-prune fit --config configs/pruning/tiny_llama_l1.yaml`, shortened: train, prune, retrain, pruned_hf/."""

import csv
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM

from lightning_prune.cli import LightningPruneCLI, _finish_wandb_runs

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_llama_fit_writes_a_pruned_hf_folder_that_reloads_identically(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load((ROOT / "configs/pruning/tiny_llama_l1.yaml").read_text())
    data = config["data"]["init_args"]
    data["train_files"] = [str(ROOT / f) for f in data["train_files"]]
    data["val_files"] = [str(ROOT / f) for f in data["val_files"]]
    data["tokenizer"] = str(ROOT / data["tokenizer"])
    config["trainer"]["callbacks"][0]["init_args"]["prune_at_epoch"] = 1
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    cli = LightningPruneCLI(args=["fit", "--config", "tiny.yaml", "--trainer.max_epochs=2",
                                  "--trainer.limit_train_batches=4", "--trainer.enable_progress_bar=false"])
    _finish_wandb_runs(cli.trainer)
    (metrics_file,) = (tmp_path / "runs").rglob("metrics.csv")
    rows = list(csv.DictReader(metrics_file.open()))
    logged = {key: float(row[key]) for row in rows for key in row if row[key]}
    assert {"pruned/train_loss", "pruned/val_acc", "final/val_loss", "val/ppl"} <= set(logged)

    reloaded = AutoModelForCausalLM.from_pretrained(metrics_file.parent / "pruned_hf").eval()
    assert (reloaded.config.num_attention_heads, reloaded.config.num_key_value_heads) == (2, 2)
    assert reloaded.config.intermediate_size == 64
    assert sum(p.numel() for p in reloaded.parameters()) == logged["prune/params_after"] < logged["prune/params_before"]
    trained = cli.model.model.eval()
    ids = torch.randint(0, 58, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, trained(ids).logits)


def test_tiny_llama_resumed_fit_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    """A text fit (the shipped tiny Llama config without its pruning) resumed from a checkpoint continues with the
    shuffle of the epoch it resumes at: its metrics and final weights equal those of a fit never interrupted (3 of
    34 batches per epoch, so the order shows)."""
    monkeypatch.chdir(tmp_path)

    def fit(name: str, epochs: int, *extra: str) -> tuple[list[dict[str, str]], dict[str, torch.Tensor]]:
        config = yaml.safe_load((ROOT / "configs/pruning/tiny_llama_l1.yaml").read_text())
        trainer = config["trainer"]
        del trainer["callbacks"]
        trainer.update(limit_train_batches=3, limit_val_batches=1, enable_progress_bar=False, logger=[
            {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": name}}])
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
        cli = LightningPruneCLI(args=["fit", "--config", f"{name}.yaml", f"--trainer.max_epochs={epochs}", *extra])
        _finish_wandb_runs(cli.trainer)
        (metrics_file,) = (tmp_path / "runs" / name).rglob("metrics.csv")
        return list(csv.DictReader(metrics_file.open())), cli.model.state_dict()

    straight, straight_weights = fit("straight", 3)
    fit("interrupted", 2)
    (last,) = (tmp_path / "runs" / "interrupted").rglob("epoch=1-*.ckpt")
    resumed, resumed_weights = fit("resumed", 3, f"--ckpt_path={last}")
    assert resumed and [row["epoch"] for row in resumed] == ["2"] * len(resumed)
    assert resumed == [row for row in straight if row["epoch"] == "2"]
    assert straight_weights.keys() == resumed_weights.keys()
    for name, weight in straight_weights.items():
        torch.testing.assert_close(resumed_weights[name], weight, rtol=0, atol=0, msg=name)


def test_shipped_lm_config_runs_from_another_folder(tmp_path, monkeypatch):
    """The shipped config, unchanged, names its assets `lightning_prune/data/assets/...`: they resolve inside the
    package from a folder that is not a clone's root, and the run trains on the shipped corpus."""
    monkeypatch.chdir(tmp_path)
    assert not (tmp_path / "lightning_prune").exists()
    cli = LightningPruneCLI(args=["fit", "--config", str(ROOT / "configs/pruning/tiny_llama_l1.yaml"),
                                  "--trainer.max_epochs=3", "--trainer.limit_train_batches=1",
                                  "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false"])
    _finish_wandb_runs(cli.trainer)
    assert cli.datamodule.tokenizer_name == str(ROOT / "lightning_prune/data/assets/tiny_text")
    assert cli.datamodule.train_files == [str(ROOT / "lightning_prune/data/assets/tiny_text/train.txt")]
    (metrics_file,) = (tmp_path / "runs").rglob("metrics.csv")
    logged = {key: float(row[key]) for row in csv.DictReader(metrics_file.open()) for key in row if row[key]}
    assert {"pruned/train_loss", "final/val_loss"} <= set(logged)
    assert logged["prune/params_after"] < logged["prune/params_before"]
