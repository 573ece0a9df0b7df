"""Zero-padded export of a per-layer-size pruned decoder: same logits, loads with from_pretrained."""

import torch
from llm_fakes import tiny_llama, token_batch
from transformers import AutoModelForCausalLM

from lightning_prune.pruning.hf_export import not_exportable_reason, save_pruned_pretrained
from lightning_prune.pruning.hf_padding import zero_padded_copy
from lightning_prune.pruning.transformer import prune_attention_heads, prune_mlp_channels


def test_zero_padded_copy_keeps_logits_and_reloads_with_from_pretrained(tmp_path):
    model = tiny_llama(heads=8, kv_heads=2, seed=7)
    prune_mlp_channels(model.model.layers[0].mlp, [0, 3, 4, 40])  # layer 0: 44 channels, layer 1: 48
    prune_attention_heads(model.model.layers[1].self_attn, [1, 5], [])  # layer 1: 3 heads per group, layer 0: 4
    assert not_exportable_reason(model) is not None
    ids, _ = token_batch(2, 12)
    padded = zero_padded_copy(model)
    assert not_exportable_reason(padded) is None
    assert [layer.mlp.gate_proj.out_features for layer in model.model.layers] == [44, 48]  # original untouched
    assert save_pruned_pretrained(padded, tmp_path) is None
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected = model(ids).logits
        torch.testing.assert_close(padded(ids).logits, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(reloaded(ids).logits, expected, rtol=1e-5, atol=1e-5)
    assert reloaded.config.intermediate_size == 48 and reloaded.config.num_attention_heads == 8


def test_zero_padded_copy_pads_removed_kv_groups():
    model = tiny_llama(heads=4, kv_heads=2, seed=8)
    prune_attention_heads(model.model.layers[0].self_attn, [], [0])  # layer 0: 1 KV group of 2 heads
    ids, _ = token_batch(2, 10)
    padded = zero_padded_copy(model)
    assert padded.model.layers[0].self_attn.k_proj.out_features == 16
    with torch.no_grad():
        torch.testing.assert_close(padded(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
