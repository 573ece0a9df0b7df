"""`lightning-prune study` over LM units: a tiny CausalLM study through to results.csv and summary.json."""

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from llm_fakes import save_tiny_tokenizer, write_text_files
from scipy import stats

import lightning_prune
from lightning_prune.data import TextDataModule
from lightning_prune.evaluation.lm_harness import TINY_LM_TASK
from lightning_prune.modules import CausalLM
from lightning_prune.pruning.build import build_structure
from lightning_prune.pruning.lm_loss import causal_lm_loss
from lightning_prune.study.report import read_results_csv
from lightning_prune.study.run import load_network_state
from lightning_prune.study.runner import run_study
from lightning_prune.study.spec import MaskConfig, RecipeConfig, StudyConfig
from lightning_prune.study.validation import validate

_ADAMW = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3.0e-3}}
_LLAMA = {"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 16, "num_hidden_layers": 1,
          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 32}


def _lm_study(tmp_path) -> StudyConfig:
    train, val = write_text_files(tmp_path / "text")
    tokenizer = save_tiny_tokenizer(tmp_path / "tok")
    return StudyConfig(
        name="lm", study_dir=tmp_path / "study",
        module={"class_path": "lightning_prune.modules.CausalLM", "init_args": {"config": _LLAMA, "example_length": 8}},
        data={"class_path": "lightning_prune.data.TextDataModule",
              "init_args": {"train_files": [str(train)], "val_files": [str(val)], "tokenizer": str(tokenizer),
                            "block_size": 8, "batch_size": 4, "eval_batch_size": 8}},
        pretrain=RecipeConfig(epochs=1, optimizer=_ADAMW, lr_scheduler=None),
        masks=MaskConfig(layers={"model.layers.0.mlp": 0.5, "model.layers.0.self_attn.kv_groups": 0.5}, sample=2,
                         criteria=["l1", "oracle"], calibration_batches=2),
        retrain=RecipeConfig(epochs=1, optimizer=_ADAMW, lr_scheduler=None),
        repeats=1, accelerator="cpu", wandb=False,
    )


def test_lm_study_samples_kv_group_and_mlp_masks_and_records_the_pruned_train_loss(tmp_path):
    config = _lm_study(tmp_path)
    train, val, tokenizer = tmp_path / "text" / "train.jsonl", tmp_path / "text" / "val.txt", tmp_path / "tok"
    summary = run_study(config)
    rows = list(csv.DictReader((tmp_path / "study" / "results.csv").open()))
    assert 3 <= len(rows) <= 4 and json.loads((tmp_path / "study" / "summary.json").read_text()) == summary
    masks = json.loads((tmp_path / "study" / "masks.json").read_text())["masks"]
    trial = json.loads(next((tmp_path / "study" / "trials").glob("m00000-r0.json")).read_text())

    # pre: the pruned train loss, by hand: prune the pretrained Llama with mask 0, token-mean loss over train blocks
    network = CausalLM(config=_LLAMA).model
    network.load_state_dict(load_network_state(tmp_path / "study" / "pretrained.ckpt"))
    build_structure(network.eval(), torch.zeros(1, 8, dtype=torch.long)).prune(masks[0]["layer_masks"])
    data = TextDataModule([str(train)], str(tokenizer), val_files=[str(val)], block_size=8)
    data.setup()
    blocks = torch.cat([b[0] for b in data.train_eval_dataloader()])
    with torch.no_grad():
        expected = causal_lm_loss(network(blocks), blocks)
    assert trial["pruned_train_loss"] == pytest.approx(float(expected), rel=1e-4)
    assert len(masks[0]["layer_masks"]["model.layers.0.mlp"]) == 8



@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"module": {"class_path": "torch.nn.Linear"}},
         r"`--module.class_path` must name a subclass of LightningModule"),
        ({"batching": "on"}, r"`--batching on` must not be used with `--module`"),
        ({"module": {"class_path": "lightning_prune.modules.CausalLM", "extra": 1}}, r"extra keys \['extra'\]"),
    ],
)
def test_lm_study_bad_module_spec_is_one_clear_message(overrides, message):
    fields = {"module": {"class_path": "lightning_prune.modules.CausalLM", "init_args": {"config": _LLAMA}},
              "data": {"class_path": "lightning_prune.data.TextDataModule", "init_args": {}},
              "masks": MaskConfig(layers={"model.layers.0.mlp": 0.5}), **overrides}
    with pytest.raises(ValueError, match=message):
        validate(StudyConfig(**fields))


# ------------------------------------------------------------------------------------- an lm-eval post metric
_POST = f"lm_eval/{TINY_LM_TASK}/acc"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"post_metric": _POST}, r"^`--post_metric` must be 'final/test_acc', or `lm_eval/<task>/<metric>` of the "
                                 r"`--lm_eval` tasks, got 'lm_eval/lightning_prune_tiny_lm/acc' with no "
                                 r"--lm_eval tasks\.$"),
        ({"post_metric": f"lm_eval/{TINY_LM_TASK}/f1", "lm_eval": {"tasks": [TINY_LM_TASK]}},
         r"^`--post_metric` must be 'final/test_acc' or a metric the `--lm_eval` tasks produce, got "
         r"'lm_eval/lightning_prune_tiny_lm/f1' names metric 'f1', which task 'lightning_prune_tiny_lm' does not "
         r"produce \(it reports \['acc', 'acc_norm'\]\)\.$"),
        ({"post_metric": "lm_eval/boolq/acc", "lm_eval": {"tasks": [TINY_LM_TASK]}}, r"not among the evaluated"),
        ({"post_metric": "lm_eval/wikitext/word_perplexity", "lm_eval": {"tasks": ["wikitext"]}},
         r"got 'lm_eval/wikitext/word_perplexity', where lower is better \(the summary reads the post metric as an "
         r"accuracy\)\.$"),
        ({"post_metric": "final/test_loss", "lm_eval": {"tasks": [TINY_LM_TASK]}},
         r"must be named `lm_eval/<task>/<metric>`, got 'final/test_loss'"),
        ({"lm_eval": {"tasks": [TINY_LM_TASK], "stages": ["before"]}},
         r"^`--lm_eval.stages` must include 'final' \(the results a trial records\), got \['before'\]\.$"),
        ({"lm_eval": {"task": [TINY_LM_TASK]}}, r"^`--lm_eval` must be accepted by LmEvaluation, got .*'task'"),
    ],
)
def test_lm_study_bad_post_metric_is_one_message_before_compute(tmp_path, overrides, message):
    config = dataclasses.replace(_lm_study(tmp_path), **overrides)
    with pytest.raises(ValueError, match=message):
        validate(config)
    with pytest.raises(ValueError, match=message):
        run_study(config)
    assert not (tmp_path / "study").exists()  # refused before anything was written or computed


def test_lm_eval_needs_a_module():
    config = StudyConfig(lm_eval={"tasks": [TINY_LM_TASK]}, pretrain=RecipeConfig(epochs=1))
    with pytest.raises(ValueError, match=r"^`--lm_eval` must be used with `--module` \(a causal LM\), got a registry "
                                         r"network 'lenet5_mini'\.$"):
        validate(config)


@pytest.mark.slow  # an lm-eval harness run in every trial (about 16 s on a 2-core CPU)
def test_lm_study_correlates_the_pruned_train_loss_with_an_lm_eval_post_metric(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    config = _lm_study(tmp_path)
    # The shipped tiny corpus and its tokenizer, from which the tiny lm-eval task is written (with the toy sentences'
    # tokenizer every option's words are unknown, the options tie and the column is constant); one pretraining epoch
    # (three answer all 40) and six masks: the retrained models' lm-eval accuracies differ.
    assets = Path(lightning_prune.__file__).parent / "data" / "assets" / "tiny_text"
    data_args = {**config.data["init_args"], "train_files": [str(assets / "train.txt")],
                 "val_files": [str(assets / "val.txt")], "tokenizer": str(assets), "block_size": 32, "batch_size": 16}
    config = dataclasses.replace(config, data={**config.data, "init_args": data_args})
    config = dataclasses.replace(config, lm_eval={"tasks": [TINY_LM_TASK], "stages": ["final"]}, post_metric=_POST,
                                 pretrain=dataclasses.replace(config.pretrain, epochs=1),
                                 masks=dataclasses.replace(config.masks, sample=4))
    summary = run_study(config)
    rows = read_results_csv(tmp_path / "study" / "results.csv")
    trials = {path.stem: json.loads(path.read_text()) for path in (tmp_path / "study" / "trials").glob("*.json")}
    # Every trial's record and row hold the lm-eval results of its retrained model (acc and acc_norm of 40 docs).
    assert all(row[_POST] == trials[row["trial_id"]][_POST] for row in rows)
    assert all(row[_POST] * 40 == pytest.approx(round(row[_POST] * 40)) for row in rows)
    assert len({row[_POST] for row in rows}) > 1 and f"lm_eval/{TINY_LM_TASK}/acc_norm" in rows[0]
    # The correlations are of the pruned train loss with that column (one repeat: a row is a mask), by scipy here.
    loss = [row["pruned_train_loss"] for row in rows]
    post = [row[_POST] for row in rows]
    expected = stats.kendalltau(loss, post)
    assert summary["kendall_tau_acc"] == pytest.approx(expected[0]) and summary["kendall_p_acc"] == pytest.approx(
        expected[1])
    assert summary["spearman_acc"] == pytest.approx(stats.spearmanr(loss, post)[0])
    oracle = rows[int(min(range(len(rows)), key=lambda i: loss[i]))]
    others = [row for row in rows if row is not oracle]
    assert summary["anomaly_ratio_acc"] == pytest.approx(sum(r[_POST] >= oracle[_POST] for r in others) / len(others))
