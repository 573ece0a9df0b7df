"""Decoder-LM pruning units: MLP channels (Torch-Pruning groups) and GQA-aware heads, masks equal to removal."""

import pytest
import torch
from llm_fakes import tiny_llama, tiny_qwen2, token_batch

from lightning_prune.pruning.build import build_structure, replay_pruning
from lightning_prune.pruning.criteria import build_criterion
from lightning_prune.pruning.lm_loss import causal_lm_loss
from lightning_prune.pruning.transformer import DecoderStructure, head_counts

EXAMPLE = torch.zeros(1, 8, dtype=torch.long)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_decoder_structure_lists_mlp_channels_heads_and_kv_groups():
    structure = build_structure(tiny_llama(), EXAMPLE)
    assert isinstance(structure, DecoderStructure)
    assert {name: (layer.kind, layer.units) for name, layer in structure.layers.items()} == {
        f"model.layers.{i}.{unit}": value
        for i in range(2)
        for unit, value in (("self_attn", ("heads", 4)), ("self_attn.kv_groups", ("kv_groups", 2)),
                            ("mlp", ("channels", 48)))
    }


def test_mlp_channel_group_is_gate_and_up_rows_and_down_columns():
    structure = build_structure(tiny_llama(), EXAMPLE)
    found = {(piece.param, piece.dim): piece.units.tolist() for piece in structure.slices("model.layers.1.mlp")}
    channels = list(range(48))
    assert found == {
        ("model.layers.1.mlp.gate_proj.weight", 0): channels,
        ("model.layers.1.mlp.up_proj.weight", 0): channels,
        ("model.layers.1.mlp.down_proj.weight", 1): channels,
    }


@pytest.mark.parametrize(
    ("build", "indices"),
    [
        (tiny_llama, {"model.layers.0.mlp": [1, 5, 40], "model.layers.0.self_attn": [0, 3],
                      "model.layers.1.self_attn.kv_groups": [1]}),
        (tiny_qwen2, {"model.layers.1.mlp": [0, 39], "model.layers.0.self_attn": [1, 2, 3, 5],
                      "model.layers.1.self_attn.kv_groups": [0]}),
        (lambda: tiny_llama(heads=4, kv_heads=4), {"model.layers.0.self_attn": [2], "model.layers.1.mlp": [7]}),
    ],
    ids=["llama-gqa", "qwen2-bias", "llama-mha"],
)
def test_physical_pruning_gives_the_masked_models_logits(build, indices):
    ids, _ = token_batch()
    masked, physical = build(), build()
    structure = build_structure(masked, EXAMPLE)
    checked = structure.check_indices(indices)
    for name, mask in structure.parameter_masks(checked).items():
        masked.get_parameter(name).data.mul_(mask)
    build_structure(physical, EXAMPLE).prune(checked)
    assert sum(p.numel() for p in physical.parameters()) < sum(p.numel() for p in masked.parameters())
    torch.testing.assert_close(_logits(physical, ids), _logits(masked, ids), atol=1e-5, rtol=1e-5)


def test_physical_pruning_leaves_valid_gqa_head_counts():
    model = tiny_qwen2()
    structure = build_structure(model, EXAMPLE)
    counts = structure.pruned_counts(structure.select({"model.layers.*.self_attn": 0.34, "model.layers.*.mlp": 0.5}))
    assert counts == {"model.layers.0.self_attn": 2, "model.layers.0.mlp": 20,
                      "model.layers.1.self_attn": 2, "model.layers.1.mlp": 20}
    scores = {name: torch.arange(structure.layers[name].units, dtype=torch.float64).flip(0) for name in counts}
    chosen = structure.choose_units(scores, counts)
    assert chosen["model.layers.0.self_attn"] == [2, 5]  # the lowest score in each group of 3 query heads
    structure.prune(chosen)
    for layer in model.model.layers:
        assert head_counts(layer.self_attn) == (4, 2) and layer.self_attn.num_key_value_groups == 2
        assert layer.mlp.down_proj.in_features == 20
    model(token_batch()[0])  # still runs


def test_replayed_record_rebuilds_the_pruned_shapes_and_logits():
    pruned, fresh = tiny_llama(), tiny_llama(seed=5)
    indices = {"model.layers.0.mlp": [3, 4], "model.layers.1.self_attn": [1, 2],
               "model.layers.0.self_attn.kv_groups": [0]}
    record = build_structure(pruned, EXAMPLE).prune(indices)
    replay_pruning(fresh, record, EXAMPLE)
    fresh.load_state_dict(pruned.state_dict())
    ids, _ = token_batch()
    torch.testing.assert_close(_logits(fresh, ids), _logits(pruned, ids))


def test_head_ratio_breaking_gqa_groups_names_the_valid_ratios():
    structure = build_structure(tiny_qwen2(), EXAMPLE)
    with pytest.raises(ValueError, match=r"ratio 0.2 for 'model.layers.0.self_attn' must prune the same number of "
                                         r"query heads from each of the 2 KV groups.*got 1; valid ratios: "
                                         r"\[0.0, 0.3333, 0.6667\].*'model.layers.0.self_attn.kv_groups'"):
        structure.pruned_counts(structure.select({"model.layers.0.self_attn": 0.2}))


def test_explicit_heads_must_be_equal_per_group():
    structure = build_structure(tiny_qwen2(), EXAMPLE)
    with pytest.raises(ValueError, match=r"same number of query heads from each KV group.*got \[2, 0\] per group"):
        structure.check_indices({"model.layers.0.self_attn": [0, 1]})


def test_heads_and_kv_groups_of_one_attention_cannot_both_be_selected():
    structure = build_structure(tiny_llama(), EXAMPLE)
    with pytest.raises(ValueError, match="either the query heads or the KV groups of an attention, got both"):
        structure.select({"model.layers.0.self_attn*": 0.5})


def test_pattern_matching_no_transformer_unit_lists_the_prunable_ones():
    structure = build_structure(tiny_llama(), EXAMPLE)
    with pytest.raises(ValueError, match=r"pattern 'model.layers.\*.attn' must match a prunable layer.*prunable "
                                         r"layers: model.layers.0.self_attn, model.layers.0.self_attn.kv_groups"):
        structure.select({"model.layers.*.attn": 0.5})


def test_causal_lm_loss_matches_shifted_cross_entropy_by_hand():
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[1, 2, 3, -100, 4], [0, 6, -100, 5, 5]])
    pairs = [(b, t) for b in range(2) for t in range(4) if labels[b, t + 1] != -100]
    expected = sum(-torch.log_softmax(logits[b, t], -1)[labels[b, t + 1]] for b, t in pairs) / len(pairs)
    torch.testing.assert_close(causal_lm_loss(logits, labels), expected)


def _loss(model, batch):
    with torch.no_grad():
        return float(causal_lm_loss(model(batch[0]), batch[1]))


@pytest.mark.parametrize(
    ("build", "layer"),
    [(tiny_llama, "model.layers.0.mlp"), (tiny_llama, "model.layers.1.self_attn.kv_groups"),
     (lambda: tiny_llama(heads=4, kv_heads=4), "model.layers.1.self_attn")],
    ids=["mlp", "kv-groups", "mha-heads"],
)
def test_oracle_score_is_the_loss_increase_of_physically_removing_the_unit(build, layer):
    batches = [token_batch(seed=1), token_batch(batch=3, seed=2)]
    structure = build_structure(build(), EXAMPLE)
    scores = build_criterion("oracle", chunk_size=16).scores(structure, [layer], batches, causal_lm_loss)[layer]
    total = sum(len(b[1]) for b in batches)
    base = sum(_loss(build(), b) * len(b[1]) for b in batches) / total
    for unit in range(structure.layers[layer].units):
        pruned = build()
        build_structure(pruned, EXAMPLE).prune({layer: [unit]})
        expected = sum(_loss(pruned, b) * len(b[1]) for b in batches) / total - base
        assert scores[unit].item() == pytest.approx(expected, abs=1e-5)


def test_taylor_score_of_a_query_head_is_the_squared_gradient_weight_sum_by_hand():
    model, batch = tiny_qwen2(), token_batch()
    structure = build_structure(model, EXAMPLE)
    scores = build_criterion("taylor").scores(structure, ["model.layers.0.self_attn"], [batch], causal_lm_loss)
    attention = model.model.layers[0].self_attn
    causal_lm_loss(model(batch[0]), batch[1]).backward()
    d = attention.head_dim
    for head in range(6):
        rows = slice(head * d, (head + 1) * d)
        q, o = attention.q_proj, attention.o_proj
        total = ((q.weight.grad * q.weight)[rows].sum() + (q.bias.grad * q.bias)[rows].sum()
                 + (o.weight.grad * o.weight)[:, rows].sum())
        assert scores["model.layers.0.self_attn"][head].item() == pytest.approx(float(total.detach()) ** 2, rel=1e-4)


def test_l1_score_of_an_mlp_channel_sums_its_gate_up_rows_and_down_column():
    model = tiny_llama()
    structure = build_structure(model, EXAMPLE)
    scores = build_criterion("l1").scores(structure, ["model.layers.1.mlp"])["model.layers.1.mlp"]
    mlp = model.model.layers[1].mlp
    expected = (mlp.gate_proj.weight.abs().sum(1) + mlp.up_proj.weight.abs().sum(1)
                + mlp.down_proj.weight.abs().sum(0)).double()
    torch.testing.assert_close(scores, expected.detach())


def test_random_and_explicit_criteria_choose_valid_units():
    structure = build_structure(tiny_llama(), EXAMPLE)
    counts = {"model.layers.0.self_attn": 2, "model.layers.1.mlp": 5}
    scores = build_criterion("random", seed=3).scores(structure, list(counts))
    chosen = structure.choose_units(scores, counts)
    assert [i // 2 for i in chosen["model.layers.0.self_attn"]] == [0, 1]  # one head per KV group
    assert len(chosen["model.layers.1.mlp"]) == 5
    explicit = build_criterion("explicit", indices={"model.layers.1.mlp": [0, 9]})
    picked = structure.choose_units(explicit.scores(structure, ["model.layers.1.mlp"]), {"model.layers.1.mlp": 2})
    assert picked == {"model.layers.1.mlp": [0, 9]}


def test_explicit_mlp_rule_matches_torch_pruning_slices_and_pruning():
    traced, explicit = build_structure(tiny_qwen2(), EXAMPLE), build_structure(tiny_qwen2(), None)
    assert explicit.graph is None

    def as_dict(structure):
        return {(p.param, p.dim): p.units.tolist() for p in structure.slices("model.layers.0.mlp")}

    assert as_dict(explicit) == as_dict(traced)
    indices = {"model.layers.0.mlp": [0, 7, 8], "model.layers.1.self_attn.kv_groups": [1]}
    traced.prune(indices)
    explicit.prune(indices)
    ids, _ = token_batch()
    torch.testing.assert_close(_logits(explicit.network, ids), _logits(traced.network, ids))
