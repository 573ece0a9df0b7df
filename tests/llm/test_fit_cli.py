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
