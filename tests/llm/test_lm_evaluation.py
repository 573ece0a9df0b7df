"""LmEvaluation in a pruning fit: lm-eval and perplexity before pruning, right after, and after LoRA recovery,
logged under their names and equal to evaluating the model by hand at those moments; bad inputs before compute."""

import copy
import csv
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger

from lightning_prune.callbacks.pruning import Pruning
from lightning_prune.data.text import TextDataModule
from lightning_prune.evaluation.callback import LmEvaluation
from lightning_prune.evaluation.lm_harness import TINY_LM_TASK, evaluate_lm
from lightning_prune.evaluation.perplexity import load_texts, perplexity
from lightning_prune.modules.causal_lm import CausalLM

ASSETS = Path(__file__).resolve().parents[2] / "lightning_prune" / "data" / "assets" / "tiny_text"
TINY = {"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 64}


@pytest.fixture(autouse=True)
def _offline_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def _data():
    return TextDataModule([str(ASSETS / "train.txt")], str(ASSETS), val_files=[str(ASSETS / "val.txt")],
                          block_size=16, batch_size=8)


def _measure(module, tokenizer):
    results = evaluate_lm(module.model, tokenizer, [TINY_LM_TASK])
    ppl = perplexity(module.model, tokenizer, load_texts(ASSETS / "val.txt"), seq_len=16, preset="llm_pruner")
    return {f"lm_eval/{TINY_LM_TASK}/acc": results[TINY_LM_TASK]["acc"],
            f"lm_eval/{TINY_LM_TASK}/acc_norm": results[TINY_LM_TASK]["acc_norm"], "ppl/val": ppl}


@pytest.mark.slow  # an lm-eval harness run
def test_lm_evaluation_measures_before_after_pruning_and_after_lora(tmp_path):
    torch.manual_seed(0)
    module = CausalLM(config=TINY)
    data = _data()
    pruning = Pruning(criterion="l1", layers={"model.layers.*.mlp": 0.75}, prune_at_epoch=1, measure=False,
                      retrain={"method": "lora", "r": 4, "dropout": 0.0})
    evaluation = LmEvaluation(tasks=[TINY_LM_TASK], perplexity={"val": str(ASSETS / "val.txt")},
                              perplexity_seq_len=16, batch_size=16)
    copies = {}

    class Copy(Callback):  # the model as it is when `before` and `pruned` are measured
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 0:
                copies["before"] = copy.deepcopy(pl_module)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if pruning.pruned and "pruned" not in copies:
                copies["pruned"] = copy.deepcopy(pl_module)

    trainer = Trainer(max_epochs=2, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                      limit_train_batches=3, limit_val_batches=1, logger=CSVLogger(tmp_path),
                      callbacks=[Copy(), evaluation, pruning], default_root_dir=tmp_path, enable_checkpointing=False)
    trainer.fit(module, datamodule=data)

    tokenizer = data.tokenizer
    expected = {"unpruned/" + k: v for k, v in _measure(copies["before"], tokenizer).items()}
    expected |= {"pruned/" + k: v for k, v in _measure(copies["pruned"], tokenizer).items()}
    expected |= _measure(module, tokenizer)  # after LoRA recovery (merged)
    got = {key: value for stage in evaluation.results.values() for key, value in stage.items()}
    assert got == pytest.approx(expected, rel=1e-6)
    rows = list(csv.DictReader(next(tmp_path.rglob("metrics.csv")).open()))
    logged = {key for row in rows for key, value in row.items() if value}
    assert set(expected) <= logged
    assert expected["pruned/ppl/val"] != expected["unpruned/ppl/val"]  # pruning changed the model


def test_lm_evaluation_bad_inputs_stop_before_training(tmp_path):
    with pytest.raises(ValueError, match="`tasks` or `perplexity` must be given"):
        LmEvaluation()
    with pytest.raises(ValueError, match=r"`stages` must be a non-empty list of \['before', 'pruned', 'final'\]"):
        LmEvaluation(tasks=[TINY_LM_TASK], stages=["after"])
    short = tmp_path / "short.txt"
    short.write_text("the cat sat on the mat\n")
    cases = [(LmEvaluation(tasks=["lightning_prune_tiny"]), "close names: \\['lightning_prune_tiny_lm'"),
             (LmEvaluation(perplexity={"short": str(short)}), r"`perplexity\['short'\]`.*at least one window of "
                                                              "`seq_len` 128 tokens, got 6 tokens")]
    cases.append((LmEvaluation(perplexity={"wiki": str(tmp_path / "wiki.test.raw")}),
                  r"`perplexity\['wiki'\]` must be an existing file"))
    for evaluation, message in cases:
        module = CausalLM(config=TINY)
        before = copy.deepcopy(module.state_dict())
        trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                          callbacks=[evaluation], enable_checkpointing=False, default_root_dir=tmp_path)
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            trainer.fit(module, datamodule=_data())
        assert all(torch.equal(value, before[key]) for key, value in module.state_dict().items())
