"""lm-evaluation-harness: in process on a per-layer-size pruned model, through lm-eval's own CLI on `pruned_hf/`,
both against a hand computation of the tiny task's acc and acc_norm from the model's log-likelihoods."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from llm_fakes import tiny_llama
from transformers import AutoModelForCausalLM, AutoTokenizer

from lightning_prune.evaluation.lm_harness import (
    LM_TASKS_DIR,
    TINY_LM_TASK,
    check_tasks,
    evaluate_lm,
    flatten_results,
    logged_names,
    metric_problem,
    task_metrics,
)
from lightning_prune.pruning.hf_export import not_exportable_reason, save_pruned_pretrained
from lightning_prune.pruning.transformer import prune_mlp_channels

TOKENIZER = Path(__file__).resolve().parents[2] / "lightning_prune" / "data" / "assets" / "tiny_text"
TASK_FILE = LM_TASKS_DIR / TINY_LM_TASK / f"{TINY_LM_TASK}.jsonl"


@pytest.fixture(autouse=True)
def _offline_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.chdir(tmp_path)


def hand_accuracy(model, tokenizer) -> dict[str, float]:
    """acc: argmax of the summed log-probability of " " + choice after the context; acc_norm: divided by the
    choice's length in characters (lm-eval's definition for multiple-choice tasks)."""
    hits = {"acc": 0, "acc_norm": 0}
    docs = [json.loads(line) for line in TASK_FILE.read_text().splitlines()]
    for doc in docs:
        context = tokenizer(doc["context"])["input_ids"]
        scores = []
        for choice in doc["choices"]:
            whole = tokenizer(doc["context"] + " " + choice)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
            scores.append(sum(float(logp[t - 1, whole[t]]) for t in range(len(context), len(whole))))
        lengths = [len(choice) for choice in doc["choices"]]
        hits["acc"] += int(max(range(4), key=lambda i: scores[i]) == doc["label"])
        hits["acc_norm"] += int(max(range(4), key=lambda i: scores[i] / lengths[i]) == doc["label"])
    return {metric: count / len(docs) for metric, count in hits.items()}


@pytest.mark.slow  # an lm-eval harness run
def test_evaluate_lm_in_process_on_a_per_layer_size_model_equals_hand_computation():
    model = tiny_llama(seed=3)
    prune_mlp_channels(model.model.layers[0].mlp, list(range(0, 48, 3)))  # layer 0: 32 channels, layer 1: 48
    assert not_exportable_reason(model) is not None  # from_pretrained could not rebuild it
    model.train()
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    results = evaluate_lm(model, str(TOKENIZER), [TINY_LM_TASK], batch_size=16)
    assert model.training  # flags restored
    model.eval()
    expected = hand_accuracy(model, tokenizer)
    assert results[TINY_LM_TASK] == pytest.approx(expected)
    assert set(logged_names(results)) == {f"lm_eval/{TINY_LM_TASK}/acc", f"lm_eval/{TINY_LM_TASK}/acc_norm"}


@pytest.mark.slow  # lm-eval's own CLI in a subprocess
def test_lm_eval_cli_evaluates_a_pruned_hf_folder_on_the_shipped_task(tmp_path):
    model = tiny_llama(seed=4)
    for layer in model.model.layers:  # uniform pruning: exportable
        prune_mlp_channels(layer.mlp, list(range(16)))
    folder = tmp_path / "pruned_hf"
    assert save_pruned_pretrained(model, folder) is None
    AutoTokenizer.from_pretrained(TOKENIZER).save_pretrained(folder)
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    lm_eval = Path(sys.executable).with_name("lm_eval")
    subprocess.run(
        [str(lm_eval), "--model", "hf", "--model_args", f"pretrained={folder}", "--include_path", str(LM_TASKS_DIR),
         "--tasks", TINY_LM_TASK, "--device", "cpu", "--batch_size", "16", "--output_path", str(tmp_path / "out")],
        check=True, env=env, cwd=tmp_path, capture_output=True,
    )
    written = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    expected = hand_accuracy(reloaded, AutoTokenizer.from_pretrained(folder))
    assert flatten_results(written["results"])[TINY_LM_TASK] == pytest.approx(expected)


def test_lm_eval_task_and_metric_checks_name_the_valid_choices():
    with pytest.raises(ValueError, match=r"got 'hellaswg', which lm-eval does not know; close names: \['hellaswag'"):
        check_tasks(["hellaswg"])
    with pytest.raises(ValueError, match="`tasks` must be a non-empty list"):
        check_tasks([])
    assert task_metrics(TINY_LM_TASK) == ["acc", "acc_norm"]
    assert task_metrics("boolq") == ["acc"]
    assert set(task_metrics("ai2_arc")) == {"acc", "acc_norm"}  # a tag: its tasks' metrics
    assert metric_problem(f"lm_eval/{TINY_LM_TASK}/acc_norm", [TINY_LM_TASK]) is None
    assert "does not produce (it reports ['acc'])" in metric_problem("lm_eval/boolq/acc_norm", ["boolq"])
    assert "not among the evaluated" in metric_problem("lm_eval/piqa/acc", ["boolq"])
    assert "must be named `lm_eval/<task>/<metric>`" in metric_problem("val/acc", ["boolq"])
