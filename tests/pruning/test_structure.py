"""PruningStructure: which layers are prunable, layer selection, validation, masks equal to physical removal."""

import copy

import pytest
import torch
import torch_pruning as tp
from pruning_toys import ToyCNN, ToyResNet, tiny_vit
from torch import nn

from lightning_prune.pruning import PruningStructure, parameter_masks, pruned_count
from lightning_prune.pruning.slices import _probe_slices, group_slices

CNN_INPUT = torch.zeros(1, 1, 8, 8)
RGB_INPUT = torch.zeros(1, 3, 8, 8)


def test_structure_lists_hidden_layers_and_never_the_classifier_output():
    structure = PruningStructure(ToyCNN(), CNN_INPUT)
    assert {name: layer.units for name, layer in structure.layers.items()} == {"conv1": 6, "conv2": 4, "fc1": 5}
    vit = PruningStructure(tiny_vit(), torch.zeros(1, 3, 32, 32))
    assert "heads.head" not in vit.layers
    assert vit.layers["encoder.layers.encoder_layer_0.self_attention"].kind == "heads"
    assert vit.layers["encoder.layers.encoder_layer_0.mlp.0"].units == 64


def test_structure_keeps_train_flags_of_the_network():
    network = ToyCNN().train()
    PruningStructure(network, CNN_INPUT)
    assert all(module.training for module in network.modules())


def test_select_resolves_globs_in_module_order():
    structure = PruningStructure(ToyCNN(), CNN_INPUT)
    assert structure.select({"fc*": 0.4, "conv?": 0.5, "conv2": 0.25}) == {"conv1": 0.5, "conv2": 0.25, "fc1": 0.4}


def test_select_pattern_without_match_lists_prunable_layers():
    structure = PruningStructure(ToyCNN(), CNN_INPUT)
    with pytest.raises(ValueError, match=r"pattern 'fc2' must match a prunable layer.*conv1, conv2, fc1"):
        structure.select({"fc2": 0.5})


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, "half"])
def test_select_ratio_outside_unit_interval_is_rejected(ratio):
    with pytest.raises(ValueError, match=r"`layers\['conv1'\]` must be a ratio in \[0, 1\)"):
        PruningStructure(ToyCNN(), CNN_INPUT).select({"conv1": ratio})


def test_pruned_count_is_the_floor_of_ratio_times_units():
    assert [pruned_count(r, 10) for r in (0.0, 0.25, 0.5, 0.7, 0.99)] == [0, 2, 5, 7, 9]
    assert pruned_count(0.29, 100) == 29  # not 28 from 28.999999999999996


def test_pruned_counts_refuses_to_remove_every_unit():
    structure = PruningStructure(ToyCNN(), CNN_INPUT)
    with pytest.raises(ValueError, match="ratio for 'conv1' must leave at least one of its 6 units"):
        structure.pruned_counts({"conv1": 1 - 1e-12})


def test_coupled_layers_are_pruned_as_one_group():
    structure = PruningStructure(ToyResNet(), RGB_INPUT)
    assert structure.select({"blocks.*.conv_b": 0.5}) == {"blocks.0.conv_b": 0.5}
    assert structure.coupled("blocks.0.conv_b") == ["blocks.0.conv_b", "blocks.1.conv_b"]
    with pytest.raises(ValueError, match="must give coupled layers one ratio"):
        structure.select({"blocks.0.conv_b": 0.5, "blocks.1.conv_b": 0.25})


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        ({"fc2": [0]}, r"must name prunable layers, got 'fc2'; prunable layers: conv1, conv2, fc1"),
        ({"conv1": [6]}, r"`indices\['conv1'\]` must be integers in \[0, 6\), got \[6\]"),
        ({"conv1": [-1, 2]}, r"must be integers in \[0, 6\), got \[-1\]"),
        ({"conv1": [1, 1]}, "must not repeat an index"),
        ({"conv2": [0, 1, 2, 3]}, "must leave at least one of the layer's 4 units"),
    ],
)
def test_check_indices_rejects_bad_explicit_indices(indices, message):
    with pytest.raises(ValueError, match=message):
        PruningStructure(ToyCNN(), CNN_INPUT).check_indices(indices)


def test_check_indices_rejects_two_layers_of_one_group():
    structure = PruningStructure(ToyResNet(), RGB_INPUT)
    with pytest.raises(ValueError, match="must name one layer per dependency group"):
        structure.check_indices({"stem": [0], "blocks.1.conv_b": [1]})
    assert structure.check_indices({"blocks.1.conv_a": [3, 1]}) == {"blocks.1.conv_a": [1, 3]}


def test_mask_is_exact_unless_a_norm_spans_the_pruned_channels():
    structure = PruningStructure(tiny_vit(), torch.zeros(1, 3, 32, 32))
    assert structure.mask_is_exact("encoder.layers.encoder_layer_0.mlp.0")
    assert structure.mask_is_exact("encoder.layers.encoder_layer_0.self_attention")
    assert not structure.mask_is_exact("conv_proj")  # the embedding dim feeds every LayerNorm
    assert PruningStructure(ToyResNet(), RGB_INPUT).mask_is_exact("stem")


def test_heads_and_embedding_of_one_attention_cannot_both_be_selected():
    structure = PruningStructure(tiny_vit(), torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="must not select both the heads of"):
        structure.select({"conv_proj": 0.5, "*self_attention": 0.5})


def _tagged(network: nn.Module) -> nn.Module:
    """A float64 copy whose every parameter entry holds its own flat index."""
    tagged = copy.deepcopy(network).double()
    with torch.no_grad():
        for p in tagged.parameters():
            p.copy_(torch.arange(p.numel(), dtype=torch.float64).view_as(p))
    return tagged


@pytest.mark.parametrize(
    ("build", "example", "indices"),
    [
        (ToyCNN, CNN_INPUT, {"conv1": [1, 4], "conv2": [2], "fc1": [0, 3]}),
        (ToyResNet, RGB_INPUT, {"stem": [0, 5], "blocks.0.conv_a": [2]}),
        (tiny_vit, torch.zeros(1, 3, 32, 32), {"encoder.layers.encoder_layer_1.mlp.0": [0, 7, 63], "conv_proj": [3]}),
    ],
)
def test_parameter_masks_zero_exactly_what_physical_pruning_removes(build, example, indices):
    network = _tagged(build())
    masks = parameter_masks(network, indices, example.double())
    pruned = copy.deepcopy(network)
    PruningStructure(pruned, example.double()).prune(indices)
    kept = dict(pruned.named_parameters())
    for name, p in network.named_parameters():
        survivors = torch.zeros(p.numel(), dtype=torch.bool)
        survivors[kept[name].detach().reshape(-1).long()] = True
        expected = masks[name].reshape(-1).bool() if name in masks else torch.ones(p.numel(), dtype=torch.bool)
        assert torch.equal(survivors, expected), name


def test_probe_fallback_agrees_with_layer_rules():
    network = ToyCNN()
    structure = PruningStructure(network, CNN_INPUT)
    for name in ("conv1", "conv2"):
        group = structure._group(name)
        parameters = dict(network.named_parameters())
        by_rule = group_slices(structure.graph, group)
        by_probe = []
        for item in group.items:
            if isinstance(item.dep.target.module, nn.Module) and list(item.dep.target.module.parameters()):
                module_name = structure.graph._module2name[item.dep.target.module]
                by_probe += _probe_slices(module_name, item.dep, list(item.idxs), list(item.root_idxs))
        for unit in range(structure.layers[name].units):
            for param in parameters:
                rule_mask, probe_mask = torch.ones_like(parameters[param]), torch.ones_like(parameters[param])
                for piece in by_rule:
                    if piece.param == param:
                        piece.zero_units(rule_mask, torch.tensor([unit]))
                for piece in by_probe:
                    if piece.param == param:
                        piece.zero_units(probe_mask, torch.tensor([unit]))
                assert torch.equal(rule_mask, probe_mask), (name, unit, param)


def test_physical_prune_runs_once_and_records_torch_pruning_history():
    network = ToyCNN()
    structure = PruningStructure(network, CNN_INPUT)
    record = structure.prune({"conv1": [0, 2], "fc1": [4]})
    assert record == {"history": [["conv1", True, [0, 2]], ["fc1", True, [4]]], "heads": {}}
    assert (network.conv1.out_channels, network.bn1.num_features, network.conv2.in_channels) == (4, 4, 4)
    assert network(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    with pytest.raises(RuntimeError, match="has already pruned its network"):
        structure.prune({"conv2": [0]})


def test_history_replays_with_torch_pruning_on_a_fresh_network():
    network = ToyResNet()
    record = PruningStructure(network, RGB_INPUT).prune({"stem": [1, 2], "blocks.1.conv_a": [0]})
    fresh = ToyResNet()
    graph = tp.DependencyGraph().build_dependency(fresh, RGB_INPUT)
    graph.load_pruning_history(record["history"])
    fresh.load_state_dict(network.state_dict())
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fresh.eval()(x), network.eval()(x))
