"""One message each, before compute, for the remaining bad inputs of perplexity, lm-eval, LoRA and Alpaca data."""

import json
import re

import pytest
import torch
from llm_fakes import tiny_llama
from torch import nn

from lightning_prune.callbacks._lora import lora_masks, retrain_problems
from lightning_prune.callbacks.pruning import Pruning
from lightning_prune.data.alpaca import read_records
from lightning_prune.evaluation.callback import LmEvaluation
from lightning_prune.evaluation.lm_harness import language_model
from lightning_prune.evaluation.perplexity import check_arguments, context_length
from lightning_prune.pruning.hf_padding import zero_padded_copy
from lightning_prune.pruning.taylor_variants import llm_pruner_taylor_scores


@pytest.mark.parametrize(("args", "message"), [
    ((100, 1, "non_overlapping", None), "`seq_len` must be an integer >= 2, got 1"),
    ((100, 8, "non_overlapping", 4), "`stride` must be None for non-overlapping windows, got 4"),
    ((100, 8, "sliding", 0), r"`stride` must be an integer in \[1, seq_len=8\]"),
])
def test_perplexity_window_arguments_are_checked(args, message):
    with pytest.raises(ValueError, match=message):
        check_arguments(*args)


def test_context_length_and_language_model_need_a_transformers_model():
    with pytest.raises(ValueError, match="without one; pass `seq_len` instead"):
        context_length(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="must be a transformers causal LM or a module holding one as `model`"):
        language_model(nn.Linear(2, 2))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tasks": ["x"], "perplexity_preset": "gptq"}, r"`perplexity_preset` must be one of \['llm_pruner'"),
    ({"tasks": ["x"], "batch_size": 0}, "`batch_size` must be an integer >= 1, got 0"),
])
def test_lm_evaluation_constructor_checks(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LmEvaluation(**kwargs)


def test_lm_evaluation_needs_a_tokenizer():
    class Holder:
        datamodule = None

    with pytest.raises(ValueError, match="`tokenizer` must name the model's tokenizer folder, got None"):
        LmEvaluation(tasks=["x"])._resolve_tokenizer(Holder())


@pytest.mark.parametrize(("retrain", "message"), [
    ("lora", "`retrain` must be a dict such as"),
    ({"method": "lora", "rank": 8}, r"`retrain` keys must be among \['method', 'r'"),
    ({"r": 8}, r"LoRA settings \['r'\] must come with `method: lora`, got method 'full'"),
    ({"method": "lora", "alpha": 0}, "`retrain.alpha` must be a number > 0, got 0"),
    ({"method": "lora", "dropout": 1.0}, r"`retrain.dropout` must be in \[0, 1\), got 1.0"),
    ({"method": "lora", "target_modules": []}, "`retrain.target_modules` must be a non-empty list"),
])
def test_retrain_settings_are_checked(retrain, message):
    assert any(re.search(message, problem) for problem in retrain_problems(retrain))
    with pytest.raises(ValueError, match=message):
        Pruning(layers={"model.layers.*.mlp": 0.5}, prune_at="start", retrain=retrain)


def test_pruning_taylor_variant_and_llm_pruner_variant_are_checked():
    with pytest.raises(ValueError, match=r"`taylor_variant` must be one of \['group'"):
        Pruning(criterion="taylor", layers={"model.layers.*.mlp": 0.5}, prune_at="start", taylor_variant="second")
    with pytest.raises(ValueError, match=r"`taylor_variant` must be one of \['vectorize'"):
        llm_pruner_taylor_scores(None, [], [], None, "group")


def test_lora_mask_mode_refuses_partial_masks():
    from lightning_prune.callbacks._lora import LoraAdapters, lora_settings

    model = tiny_llama()
    adapters = LoraAdapters(model, lora_settings({"method": "lora", "target_modules": ["q_proj"]}))
    mask = torch.ones(32, 32)
    mask[3, 5] = 0  # one entry, not a whole row or column
    with pytest.raises(ValueError, match="must adapt weights masked by whole rows and columns, got a partial mask"):
        lora_masks(model, {"model.layers.0.self_attn.q_proj.weight": mask})
    assert adapters.wrapped()


def test_alpaca_file_must_hold_records(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps([]))
    with pytest.raises(ValueError, match="must hold a non-empty list of records, got none"):
        read_records(empty)


def test_zero_padding_needs_one_head_dim():
    model = tiny_llama()
    model.model.layers[1].self_attn.head_dim = 4
    with pytest.raises(ValueError, match="zero padding needs one head_dim in every layer"):
        zero_padded_copy(model)
