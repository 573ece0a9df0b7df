"""pruned_hf/: a physically pruned decoder saved with a matching config reloads with identical logits."""

import torch
from llm_fakes import tiny_llama, tiny_qwen2, token_batch
from torch import nn
from transformers import AutoModelForCausalLM

from lightning_prune.pruning.hf_export import save_pruned_pretrained
from lightning_prune.pruning.metrics import count_params_and_macs
from lightning_prune.pruning.structure import build_structure

EXAMPLE = torch.zeros(1, 8, dtype=torch.long)


def test_uniformly_pruned_qwen2_reloads_with_identical_logits_and_parameter_count(tmp_path):
    model = tiny_qwen2()
    structure = build_structure(model, EXAMPLE)
    counts = structure.pruned_counts(structure.select({"model.layers.*.mlp": 0.25, "model.layers.*.self_attn": 0.34}))
    scores = {name: torch.rand(structure.layers[name].units, generator=torch.Generator().manual_seed(1))
              for name in counts}
    structure.prune(structure.choose_units(scores, counts))
    assert save_pruned_pretrained(model, tmp_path / "pruned_hf") is None
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned_hf").eval()
    assert (reloaded.config.num_attention_heads, reloaded.config.num_key_value_heads) == (4, 2)
    assert reloaded.config.intermediate_size == 30
    ids, _ = token_batch()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)
    assert count_params_and_macs(reloaded, EXAMPLE)[0] == count_params_and_macs(model, EXAMPLE)[0]


def test_whole_kv_groups_removed_reload(tmp_path):
    model = tiny_llama(heads=4, kv_heads=2)
    build_structure(model, EXAMPLE).prune({f"model.layers.{i}.self_attn.kv_groups": [i] for i in range(2)})
    assert save_pruned_pretrained(model, tmp_path / "out") is None
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert (reloaded.config.num_attention_heads, reloaded.config.num_key_value_heads) == (2, 1)
    ids, _ = token_batch()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)


def test_sizes_differing_per_layer_are_not_exported_and_say_why(tmp_path):
    model = tiny_llama()
    build_structure(model, EXAMPLE).prune({"model.layers.0.mlp": [0, 1, 2]})
    reason = save_pruned_pretrained(model, tmp_path / "out")
    assert reason == ("sizes differ per layer ({'intermediate_size': [45, 48]}), which a transformers config "
                      "cannot express")
    assert not (tmp_path / "out").exists()
    assert "is not a transformers PreTrainedModel" in save_pruned_pretrained(nn.Linear(2, 2), tmp_path / "x")
