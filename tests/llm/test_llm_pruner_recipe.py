"""LLM-Pruner's recipe: its four Taylor importances against hand computations, and inclusive layer ranges."""

import pytest
import torch
from llm_fakes import tiny_llama, token_batch

from lightning_prune.pruning.build import build_structure
from lightning_prune.pruning.criteria import build_criterion
from lightning_prune.pruning.lm_loss import causal_lm_loss
from lightning_prune.pruning.patterns import matching_layers


def _statistics(model, batches):
    """g: mean over batches of the batch-mean loss gradient; F: mean over examples of the squared gradient."""
    weights = dict(model.named_parameters())
    g = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in weights.items()}
    fisher = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in weights.items()}
    examples = 0
    for ids, labels in batches:
        grads = torch.autograd.grad(causal_lm_loss(model(ids), labels), list(weights.values()), allow_unused=True)
        for name, grad in zip(weights, grads, strict=True):
            if grad is not None:
                g[name] += grad.double() / len(batches)
        for i in range(len(ids)):
            grads = torch.autograd.grad(causal_lm_loss(model(ids[i:i + 1]), labels[i:i + 1]), list(weights.values()),
                                        allow_unused=True)
            for name, grad in zip(weights, grads, strict=True):
                if grad is not None:
                    fisher[name] += grad.double().square()
            examples += 1
    return g, {name: value / examples for name, value in fisher.items()}


def _salience(variant, w, g, f):
    first, second = w * g, w * f * w
    return {"param_first": first, "param_second": second, "param_mix": first - 0.5 * second}[variant].abs()


def _hand_scores(model, variant, g, f, layer=0):
    """Per MLP channel and per head: LLM-Pruner's sums over the group's weights, written out per matrix."""
    prefix = f"model.layers.{layer}"
    w = {name: p.detach().double() for name, p in model.named_parameters()}

    def s(name):
        return w[name] * g[name] if variant == "vectorize" else _salience(variant, w[name], g[name], f[name])

    def rows(name):  # per output row: |sum| (vector-wise) or sum of |.| (element-wise: s is already |.|)
        return s(name).sum(1).abs() if variant == "vectorize" else s(name).sum(1)

    def cols(name):
        return s(name).sum(0).abs() if variant == "vectorize" else s(name).sum(0)

    mlp = rows(f"{prefix}.mlp.gate_proj.weight") + rows(f"{prefix}.mlp.up_proj.weight") \
        + cols(f"{prefix}.mlp.down_proj.weight")
    attn = f"{prefix}.self_attn"
    per_dim = rows(f"{attn}.q_proj.weight") + rows(f"{attn}.k_proj.weight") + rows(f"{attn}.v_proj.weight") \
        + cols(f"{attn}.o_proj.weight")  # MHA: a head owns its q, k, v rows and o_proj columns
    heads = per_dim.view(4, 8).sum(1)
    return mlp, heads


@pytest.mark.parametrize("variant", ["vectorize", "param_first", "param_second", "param_mix"])
def test_taylor_llm_pruner_variants_equal_hand_computation(variant):
    model = tiny_llama(heads=4, kv_heads=4, seed=2)
    batches = [token_batch(3, 10, seed=5), token_batch(3, 10, seed=6)]
    structure = build_structure(model, batches[0][0][:1])
    layers = ["model.layers.0.mlp", "model.layers.0.self_attn"]
    scores = build_criterion("taylor", variant=variant).scores(structure, layers, batches, causal_lm_loss)
    g, f = _statistics(model, batches)
    mlp, heads = _hand_scores(model, variant, g, f)
    torch.testing.assert_close(scores["model.layers.0.mlp"], mlp, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(scores["model.layers.0.self_attn"], heads, rtol=1e-6, atol=1e-12)
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind


def test_taylor_variant_must_be_known():
    with pytest.raises(ValueError, match=r"`taylor_variant` must be one of \['group', 'vectorize'"):
        build_criterion("taylor", variant="param_third")


def test_layer_ranges_select_inclusive_ranges_and_refuse_ranges_outside_the_model():
    names = [f"model.layers.{i}.{kind}" for i in range(32) for kind in ("mlp", "self_attn")]
    assert matching_layers("model.layers.4-29.mlp", names) == [f"model.layers.{i}.mlp" for i in range(4, 30)]
    assert matching_layers("model.layers.30-31.self_*", names) == ["model.layers.30.self_attn",
                                                                   "model.layers.31.self_attn"]
    assert matching_layers("model.layers.*.mlp", names)[:2] == ["model.layers.0.mlp", "model.layers.1.mlp"]
    structure = build_structure(tiny_llama(), token_batch(1, 8)[0])
    assert structure.select({"model.layers.1-1.mlp": 0.5}) == {"model.layers.1.mlp": 0.5}
    with pytest.raises(ValueError, match=r"range 4-29 must lie within the model's layers \(0-1 at that place"):
        structure.select({"model.layers.4-29.mlp": 0.5})
    with pytest.raises(ValueError, match="must give ranges as low-high, got 1-0"):
        structure.select({"model.layers.1-0.mlp": 0.5})
