"""`lightning-prune fit --config configs/pruning/tiny_llama_llmpruner.yaml`, shortened: block-wise Taylor pruning,
LoRA recovery, lm-eval + perplexity before/after, and a `pruned_hf/` that lm-eval's own CLI scores the same."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lightning_prune.cli import LightningPruneCLI, _finish_wandb_runs
from lightning_prune.evaluation.lm_harness import LM_TASKS_DIR, TINY_LM_TASK, flatten_results

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # a whole fit plus lm-eval's CLI
def test_tiny_llmpruner_recipe_runs_offline_and_lm_eval_cli_scores_its_pruned_hf(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    config = yaml.safe_load((ROOT / "configs/pruning/tiny_llama_llmpruner.yaml").read_text())
    data = config["data"]["init_args"]
    data["train_files"] = [str(ROOT / f) for f in data["train_files"]]
    data["val_files"] = [str(ROOT / f) for f in data["val_files"]]
    data["tokenizer"] = str(ROOT / data["tokenizer"])
    evaluation = config["trainer"]["callbacks"][1]["init_args"]
    evaluation["perplexity"] = {name: str(ROOT / path) for name, path in evaluation["perplexity"].items()}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    cli = LightningPruneCLI(args=["fit", "--config", "tiny.yaml", "--trainer.max_epochs=2",
                                  "--trainer.limit_train_batches=4", "--trainer.enable_progress_bar=false"])
    _finish_wandb_runs(cli.trainer)
    (metrics_file,) = (tmp_path / "runs").rglob("metrics.csv")
    logged = {k: float(v) for row in csv.DictReader(metrics_file.open()) for k, v in row.items() if v}
    for prefix in ("unpruned/", "pruned/", ""):
        assert {f"{prefix}lm_eval/{TINY_LM_TASK}/acc", f"{prefix}lm_eval/{TINY_LM_TASK}/acc_norm",
                f"{prefix}ppl/tiny_val"} <= set(logged)
    assert logged["retrain/trainable_params"] < logged["prune/params_after"] < logged["prune/params_before"]
    sizes = [layer.mlp.gate_proj.out_features for layer in cli.model.model.model.layers]
    assert sizes == [128, 32, 32, 128]  # block-wise: layers 1-2 only, 75% of their channels

    folder = metrics_file.parent / "pruned_hf"  # zero-padded to uniform sizes, adapters merged, with the tokenizer
    assert (folder / "tokenizer.json").is_file()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run([str(Path(sys.executable).with_name("lm_eval")), "--model", "hf", "--model_args",
                    f"pretrained={folder}", "--include_path", str(LM_TASKS_DIR),
                    "--tasks", TINY_LM_TASK, "--device", "cpu", "--batch_size", "8", "--output_path",
                    str(tmp_path / "out")], check=True, env=env, capture_output=True)
    written = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    scored = flatten_results(written["results"])[TINY_LM_TASK]
    assert scored["acc"] == pytest.approx(logged[f"lm_eval/{TINY_LM_TASK}/acc"])
    assert scored["acc_norm"] == pytest.approx(logged[f"lm_eval/{TINY_LM_TASK}/acc_norm"])
