"""Criteria: each ranks a toy whose answer is known, and matches an independent computation."""

import copy

import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from pruning_toys import ToyCNN, ToyResNet, random_batches, randomize_batchnorm, tiny_vit

from lightning_prune.pruning import (
    PruningStructure,
    build_criterion,
    explicit_scores,
    l1_scores,
    lowest_units,
    oracle_scores,
    random_scores,
    taylor_scores,
)

CNN_INPUT = torch.zeros(1, 1, 8, 8)


def _cnn_with_dead_filter() -> ToyCNN:
    """conv2's filter 1 is all zeros (weights and bias): it feeds zeros forward, so removing it changes nothing."""
    torch.manual_seed(0)
    network = ToyCNN()
    with torch.no_grad():
        network.conv2.weight[1] = 0
        network.conv2.bias[1] = 0
    return network


def test_l1_scores_are_filter_norms_and_prune_the_zero_filter_first():
    network = _cnn_with_dead_filter()
    structure = PruningStructure(network, CNN_INPUT)
    total = l1_scores(structure, ["conv1", "conv2"], "sum")
    mean = l1_scores(structure, ["conv2"], "mean")
    torch.testing.assert_close(total["conv1"], network.conv1.weight.abs().sum(dim=(1, 2, 3)).double())
    torch.testing.assert_close(mean["conv2"], network.conv2.weight.abs().mean(dim=(1, 2, 3)).double())
    assert total["conv2"][1] == 0
    assert lowest_units(total, {"conv2": 1}) == {"conv2": [1]}


def test_l1_rejects_an_unknown_reduction():
    with pytest.raises(ValueError, match=r"`l1_reduction` must be one of \['sum', 'mean'\], got 'max'"):
        l1_scores(PruningStructure(ToyCNN(), CNN_INPUT), ["conv1"], "max")


def _group_gw(network: ToyCNN, layer: str, unit: int) -> torch.Tensor:
    """sum of grad * weight over a unit's group, listed by hand for ToyCNN."""
    def gw(p, index):
        return (p.grad[index] * p.detach()[index]).sum()

    if layer == "conv1":
        return sum(gw(p, unit) for p in (network.conv1.weight, network.conv1.bias, network.bn1.weight,
                                          network.bn1.bias)) + gw(network.conv2.weight, (slice(None), unit))
    if layer == "conv2":  # a 2x2 map per channel after flatten: fc1 inputs 4u..4u+3
        columns = (slice(None), slice(4 * unit, 4 * unit + 4))
        return gw(network.conv2.weight, unit) + gw(network.conv2.bias, unit) + gw(network.fc1.weight, columns)
    return gw(network.fc1.weight, unit) + gw(network.fc1.bias, unit) + gw(network.fc2.weight, (slice(None), unit))


def test_taylor_scores_match_a_hand_listed_group_and_leave_no_grads():
    network = randomize_batchnorm(ToyCNN()).train()
    batches = random_batches((1, 8, 8), count=2)
    scores = taylor_scores(PruningStructure(network, CNN_INPUT), ["conv1", "conv2", "fc1"], batches)
    assert all(p.grad is None for p in network.parameters())
    assert network.training and network.bn1.training
    reference = copy.deepcopy(network).eval()
    expected = {name: torch.zeros(units, dtype=torch.float64) for name, units in (("conv1", 6), ("conv2", 4),
                                                                                   ("fc1", 5))}
    for x, y in batches:
        reference.zero_grad(set_to_none=True)
        F.cross_entropy(reference(x), y).backward()
        for name, values in expected.items():
            values += torch.stack([_group_gw(reference, name, u) for u in range(len(values))]).double() ** 2
    for name in expected:
        torch.testing.assert_close(scores[name], expected[name], rtol=1e-5, atol=1e-12)


def _mean_loss(network, batches) -> float:
    network.eval()
    with torch.no_grad():
        return sum(F.cross_entropy(network(x), y).item() * len(y) for x, y in batches) / sum(len(y) for _, y in batches)


def _removal_delta(network, example, layer: str, unit: int, batches) -> float:
    """Loss increase after physically removing one filter with Torch-Pruning directly."""
    pruned = copy.deepcopy(network)
    graph = tp.DependencyGraph().build_dependency(pruned, example)
    graph.get_pruning_group(pruned.get_submodule(layer), tp.prune_conv_out_channels, [unit]).prune()
    return _mean_loss(pruned, batches) - _mean_loss(copy.deepcopy(network), batches)


@pytest.mark.parametrize(
    ("build", "shape", "layers"),
    [(ToyCNN, (1, 8, 8), ["conv1", "conv2"]), (ToyResNet, (3, 8, 8), ["stem", "blocks.1.conv_a"])],
)
def test_oracle_score_is_the_loss_increase_of_physically_removing_the_filter(build, shape, layers):
    torch.manual_seed(1)
    network = randomize_batchnorm(build())
    batches = random_batches(shape, count=2, batch=6) + random_batches(shape, count=1, batch=3, seed=1)
    example = torch.zeros(1, *shape)
    scores = oracle_scores(PruningStructure(network, example), layers, batches, chunk_size=4)
    for layer in layers:
        units = [0, 2, 3]
        expected = torch.tensor([_removal_delta(network, example, layer, u, batches) for u in units])
        torch.testing.assert_close(scores[layer][units], expected.double(), atol=2e-6, rtol=1e-4)


def test_oracle_scores_a_dead_filter_zero_and_agrees_batched_or_looped():
    network = _cnn_with_dead_filter()
    batches = random_batches((1, 8, 8), count=2)
    structure = PruningStructure(network, CNN_INPUT)
    batched = oracle_scores(structure, ["conv2", "fc1"], batches, chunk_size=3)
    looped = oracle_scores(structure, ["conv2", "fc1"], batches, batched=False)
    assert abs(batched["conv2"][1]) < 1e-6
    for name in batched:
        torch.testing.assert_close(batched[name], looped[name], atol=1e-6, rtol=1e-5)


def test_oracle_scores_attention_heads_and_mlp_channels_of_a_vit():
    network = tiny_vit()
    batches = random_batches((3, 32, 32), count=1, batch=4, classes=5)
    example = torch.zeros(1, 3, 32, 32)
    head = "encoder.layers.encoder_layer_0.self_attention"
    layers = [head, "encoder.layers.encoder_layer_1.mlp.0"]
    scores = oracle_scores(PruningStructure(network, example), layers, batches, chunk_size=8)
    for unit in (0, 3):
        pruned = copy.deepcopy(network)
        PruningStructure(pruned, example).prune({head: [unit]})
        delta = _mean_loss(pruned, batches) - _mean_loss(copy.deepcopy(network), batches)
        assert scores[head][unit] == pytest.approx(delta, abs=2e-6)
    assert scores[layers[1]].shape == (64,)


def test_oracle_and_taylor_refuse_to_run_without_batches():
    structure = PruningStructure(ToyCNN(), CNN_INPUT)
    with pytest.raises(ValueError, match="criterion 'oracle' must get at least one calibration batch"):
        oracle_scores(structure, ["conv1"], [])
    with pytest.raises(ValueError, match="criterion 'taylor' must get at least one calibration batch"):
        taylor_scores(structure, ["conv1"], [])
    with pytest.raises(ValueError, match="`chunk_size` must be at least 1, got 0"):
        oracle_scores(structure, ["conv1"], random_batches((1, 8, 8)), chunk_size=0)


def test_random_scores_are_reproducible_per_seed():
    structure = PruningStructure(ToyCNN(), CNN_INPUT)
    first, again, other = (random_scores(structure, ["conv1", "fc1"], seed) for seed in (3, 3, 4))
    assert torch.equal(first["conv1"], again["conv1"]) and torch.equal(first["fc1"], again["fc1"])
    assert not torch.equal(first["conv1"], other["conv1"])
    assert ((first["conv1"] >= 0) & (first["conv1"] < 1)).all()


def test_explicit_scores_make_the_given_indices_the_lowest():
    structure = PruningStructure(ToyCNN(), CNN_INPUT)
    scores = explicit_scores(structure, ["conv1", "conv2"], {"conv1": [4, 1]})
    assert lowest_units(scores, {"conv1": 2, "conv2": 0}) == {"conv1": [1, 4], "conv2": []}


def test_lowest_units_per_layer_breaks_ties_by_lower_index():
    scores = {"a": torch.tensor([3.0, 1.0, 1.0, 0.0]), "b": torch.tensor([0.5, 0.1, 0.9])}
    assert lowest_units(scores, {"a": 2, "b": 1}) == {"a": [1, 3], "b": [1]}


def test_lowest_units_global_ranks_across_layers_but_keeps_a_unit_in_each():
    scores = {"a": torch.tensor([0.1, 0.2, 0.3]), "b": torch.tensor([5.0, 0.15, 6.0, 7.0])}
    assert lowest_units(scores, {"a": 1, "b": 2}, global_ranking=True) == {"a": [0, 1], "b": [1]}
    # a's three lowest come first, but a keeps its last unit: the next-lowest of b is taken instead
    assert lowest_units(scores, {"a": 2, "b": 2}, global_ranking=True) == {"a": [0, 1], "b": [0, 1]}


def test_build_criterion_by_name():
    assert build_criterion("oracle").needs_data and build_criterion("taylor").needs_data
    assert not build_criterion("l1", reduction="mean").needs_data
    with pytest.raises(ValueError, match=r"`criterion` must be one of \['l1', 'taylor', 'oracle', 'random', "
                                         r"'explicit', 'bn_scale'\], got 'magnitude'"):
        build_criterion("magnitude")


def test_oracle_module_imports_no_criterion_module():
    """The criteria import the oracle, never the other way round (no import cycle, no private helpers across)."""
    import ast
    import inspect

    from lightning_prune.pruning import oracle

    imported = {
        node.module for node in ast.walk(ast.parse(inspect.getsource(oracle))) if isinstance(node, ast.ImportFrom)
    }
    assert "lightning_prune.pruning.importance" not in imported
    assert "lightning_prune.pruning.calibration" in imported
