"""Every torchvision classifier of the list prunes 25% of every prunable layer, physically and masked.

Random weights (nothing is downloaded), 10 classes, the smallest input each network accepts. One model per
parametrization: masked in place (the masked entries are exactly the removed ones, test_structure.py), run, then
pruned physically. The last layer is re-drawn so that the outputs are not constant (ViT starts with a zero head),
which would make "masked equals physical" vacuous.
"""

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from lightning_prune.pruning import PruningStructure, apply_masks, l1_scores, lowest_units

# Torch-Pruning's shape inference warns on Swin's window reshapes; harmless here.
pytestmark = pytest.mark.filterwarnings("ignore:Maximum recursive depth reached")

# name -> (input size, extra builder arguments, layer patterns). ViT: heads and MLP (its embedding dimension, which
# excludes the heads of the same attention, is covered in test_real_models.py).
CLASSIFIERS = {
    "resnet18": (32, {}, {"*": 0.25}),
    "resnet50": (32, {}, {"*": 0.25}),
    "resnext50_32x4d": (32, {}, {"*": 0.25}),
    "wide_resnet50_2": (32, {}, {"*": 0.25}),
    "mobilenet_v2": (32, {}, {"*": 0.25}),
    "mobilenet_v3_small": (32, {}, {"*": 0.25}),
    "efficientnet_b0": (32, {}, {"*": 0.25}),
    "efficientnet_v2_s": (32, {}, {"*": 0.25}),
    "densenet121": (32, {}, {"*": 0.25}),
    "regnet_y_400mf": (32, {}, {"*": 0.25}),
    "shufflenet_v2_x0_5": (32, {}, {"*": 0.25}),
    "squeezenet1_0": (48, {}, {"*": 0.25}),
    "googlenet": (32, {"aux_logits": False, "init_weights": False}, {"*": 0.25}),
    "mnasnet0_5": (32, {}, {"*": 0.25}),
    "vgg11_bn": (32, {}, {"*": 0.25}),
    "alexnet": (64, {}, {"*": 0.25}),
    "convnext_tiny": (32, {}, {"*": 0.25}),
    "vit_b_16": (32, {"image_size": 32}, {"*self_attention": 0.25, "*mlp.0": 0.25}),
    "swin_t": (32, {}, {"*": 0.25}),
}
# Layers refused, with the reason the warning gives; every other conv/linear but the classifier is prunable.
REFUSED = {"shufflenet_v2_x0_5": "channel shuffle", "swin_t": "PatchMerging"}
# LayerNorm over the pruned channels: masks are not exactly removal.
INEXACT = {"convnext_tiny"}


def _build(name: str) -> tuple[nn.Module, torch.Tensor]:
    size, kwargs, _ = CLASSIFIERS[name]
    torch.manual_seed(0)
    network = torchvision.models.get_model(name, num_classes=10, **kwargs)
    last = [m for m in network.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    nn.init.normal_(last.weight, std=0.05)
    return network.eval(), torch.randn(2, 3, size, size)


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_classifier_prunes_a_quarter_of_every_prunable_layer(name):
    network, images = _build(name)
    before = sum(p.numel() for p in network.parameters())
    structure = PruningStructure(network, images[:1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ratios = structure.select(CLASSIFIERS[name][2])
    skipped = [str(w.message) for w in caught if "cannot be pruned" in str(w.message)]
    if name in REFUSED:
        assert len(skipped) == 1 and REFUSED[name] in skipped[0] and structure.refused
        assert all(layer in skipped[0] for layer in structure.refused)
    else:
        assert not skipped and not structure.refused
    counts = structure.pruned_counts(ratios)
    for layer, count in counts.items():
        units = structure.layers[layer].units
        assert count == math.floor(0.25 * units + 1e-9)
    indices = lowest_units(l1_scores(structure, list(counts)), counts)
    exact = all(structure.mask_is_exact(layer) for layer in indices)
    assert exact == (name not in INEXACT)

    with torch.no_grad():  # the masked entries are those that pruning removes (test_structure.py): mask in place
        apply_masks(network, structure.parameter_masks(indices))
        expected = network(images)
    structure.prune(indices)
    with torch.no_grad():
        out = network(images)
    assert out.shape == (2, 10)
    assert sum(p.numel() for p in network.parameters()) < 0.95 * before
    if exact:
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-3)
    else:
        assert not torch.allclose(out, expected, atol=1e-4)

    network.train()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01)
    loss = F.cross_entropy(network(images), torch.tensor([1, 7]))
    loss.backward()
    grads = [p.grad for p in network.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
    snapshot = [p.detach().clone() for p in network.parameters()]
    optimizer.step()
    assert any(not torch.equal(old, p) for old, p in zip(snapshot, network.parameters(), strict=True))


class GroupedToy(nn.Module):
    """conv_in(3->8) -> grouped conv(8->8, 2 groups of 4) -> BN -> head(8->3): conv_in and grouped are in 2 groups."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.grouped(F.relu(self.conv_in(x))))
        return self.head(F.adaptive_avg_pool2d(F.relu(x), 1).flatten(1))


def test_grouped_conv_units_are_positions_in_every_group_scored_over_the_groups():
    torch.manual_seed(0)
    network = GroupedToy().eval()
    structure = PruningStructure(network, torch.zeros(1, 3, 8, 8))
    layer = structure.layers["conv_in"]
    assert (layer.units, layer.channel_groups) == (4, 2) and structure.layers["grouped"].units == 4
    # Independent L1: unit j is filter j of group 0 plus filter j of group 1 (channels j and j + 4).
    filters = network.conv_in.weight.detach().abs().double().sum(dim=(1, 2, 3))
    torch.testing.assert_close(l1_scores(structure, ["conv_in"])["conv_in"], filters[:4] + filters[4:])
    masks = structure.parameter_masks({"conv_in": [1]})
    # Input channels 1 and 5 of the grouped conv: column 1 of the rows of group 0 and of group 1, i.e. all rows.
    assert masks["grouped.weight"][:, 1].eq(0).all() and masks["grouped.weight"][:, [0, 2, 3]].eq(1).all()
    survivors = copy_with_tags(network)
    PruningStructure(survivors, torch.zeros(1, 3, 8, 8).double()).prune({"conv_in": [1]})
    assert (survivors.conv_in.out_channels, survivors.grouped.in_channels, survivors.grouped.groups) == (6, 6, 2)
    kept = survivors.grouped.weight.detach().reshape(-1).long()
    expected = masks["grouped.weight"].reshape(-1).nonzero().flatten()
    assert torch.equal(kept, expected)


def copy_with_tags(network: nn.Module) -> nn.Module:
    """A float64 copy whose every parameter entry holds its own flat index (so survivors can be read back)."""
    tagged = copy.deepcopy(network).double()
    with torch.no_grad():
        for p in tagged.parameters():
            p.copy_(torch.arange(p.numel(), dtype=torch.float64).view_as(p))
    return tagged


def test_grouped_ratio_rounding_is_logged(caplog):
    structure = PruningStructure(GroupedToy(), torch.zeros(1, 3, 8, 8))
    with caplog.at_level("INFO", logger="lightning.pytorch.lightning_prune"):
        assert structure.pruned_counts({"conv_in": 0.5}) == {"conv_in": 2}
        assert not caplog.records
        assert structure.pruned_counts({"conv_in": 0.4}) == {"conv_in": 1}  # floor(1.6) per group, not floor(3.2)
    assert "rounds to 1 of the 4 channels of each of its 2 groups (2 of 8)" in caplog.text


def test_shuffle_and_patch_merging_layers_are_refused_by_name():
    network, images = _build("shufflenet_v2_x0_5")
    structure = PruningStructure(network, images[:1])
    with pytest.raises(ValueError, match=r"'stage2.0.branch2.5' must match a prunable layer, got only layers that "
                       r"cannot be pruned: stage2.0.branch2.5 \(its channels reach a channel shuffle"):
        structure.select({"stage2.0.branch2.5": 0.25})
    assert "stage2.0.branch2.0" in structure.layers  # the first conv of a branch is prunable
    network, images = _build("swin_t")
    structure = PruningStructure(network, images[:1])
    with pytest.raises(ValueError, match=r"features.2.reduction \(it is the reduction of Swin's PatchMerging "
                       r"'features.2', not supported\)"):
        structure.select({"features.2.reduction": 0.25})


def test_listing_builds_no_group_and_select_only_the_chosen_ones():
    network, images = _build("swin_t")
    structure = PruningStructure(network, images[:1])
    assert structure._groups == {}
    assert structure.layers["features.1.0.attn"].kind == "heads"
    assert structure.layers["features.5.0.mlp.0"].units == 1536
    ratios = structure.select({"*mlp.0": 0.25})
    assert sorted(structure._groups) == sorted(ratios) and len(ratios) == 12


def test_group_over_the_guard_is_refused_with_the_reason(monkeypatch):
    from lightning_prune.pruning import groups

    network, images = _build("resnet18")
    structure = PruningStructure(network, images[:1])
    monkeypatch.setattr(groups, "GROUP_MAX_INDICES", 100)
    with pytest.raises(ValueError, match=r"got only layers that cannot be pruned: layer1.0.conv1 \(its dependency "
                       r"group exceeds 100 channel indices"):
        structure.select({"layer1.0.conv1": 0.25})
    assert "layer1.0.conv1" in structure.refused and "layer1.0.conv1" not in structure.layers


def test_guarded_group_equals_torch_pruning_group():
    import torch_pruning as tp

    from lightning_prune.pruning.groups import guarded_group

    network, images = _build("regnet_y_400mf")
    structure = PruningStructure(network, images[:1])
    module = network.get_submodule("trunk_output.block1.block1-0.f.b.0")
    ours = guarded_group(structure.graph, module, [0, 3, 5])
    theirs = structure.graph.get_pruning_group(module, tp.prune_conv_out_channels, [0, 3, 5])

    def items(group):
        return [(str(item.dep), list(item.idxs), list(item.root_idxs)) for item in group.items]

    assert len(items(ours)) > 5 and items(ours) == items(theirs)


@pytest.mark.parametrize(
    ("shift", "size"), [([0, 0], (14, 14)), ([3, 3], (14, 14)), ([3, 3], (9, 16)), ([3, 3], (5, 5))]
)
def test_head_pruned_window_attention_matches_torchvision_and_its_masks(shift, size):
    from torchvision.models.swin_transformer import ShiftedWindowAttention

    from lightning_prune.pruning.slices import masks_from_slices
    from lightning_prune.pruning.window_attention import HeadPrunedWindowAttention, window_head_slices

    torch.manual_seed(0)
    attention = ShiftedWindowAttention(32, [7, 7], shift, num_heads=4).eval()
    nn.init.normal_(attention.relative_position_bias_table)
    x = torch.randn(2, *size, 32)
    torch.testing.assert_close(HeadPrunedWindowAttention(attention, [])(x), attention(x))
    pruned = HeadPrunedWindowAttention(attention, [0, 2])
    masked = nn.Sequential(copy.deepcopy(attention))
    masks = masks_from_slices(dict(masked.named_parameters()), window_head_slices("0", masked[0]), [0, 2])
    assert masks["0.relative_position_bias_table"][:, [0, 2]].eq(0).all()
    assert masks["0.relative_position_bias_table"][:, [1, 3]].eq(1).all()
    with torch.no_grad():
        apply_masks(masked, masks)
    assert pruned.num_heads == 2 and pruned.qkv.out_features == 48 and pruned.proj.in_features == 16
    torch.testing.assert_close(pruned(x), masked(x))


@pytest.mark.parametrize("name", ["grouped_toy", "swin_t"])
def test_pruning_record_replays_on_a_fresh_network(name):
    from lightning_prune.pruning.build import replay_pruning

    def build():
        if name == "grouped_toy":
            torch.manual_seed(0)
            return GroupedToy().eval(), torch.randn(2, 3, 8, 8)
        return _build(name)

    network, images = build()
    structure = PruningStructure(network, images[:1])
    patterns = {"conv_in": 0.5} if name == "grouped_toy" else {"*mlp.0": 0.25, "features.5.*.attn": 0.25}
    counts = structure.pruned_counts(structure.select(patterns))
    record = structure.prune(lowest_units(l1_scores(structure, list(counts)), counts))
    fresh, _ = build()
    replay_pruning(fresh, record, images[:1])
    shapes = {k: v.shape for k, v in network.state_dict().items()}
    assert shapes == {k: v.shape for k, v in fresh.state_dict().items()}
    fresh.load_state_dict(network.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(images), network(images))


def test_registry_builds_resnext_and_swin_and_replaces_swin_head():
    from lightning_prune.models import build_model
    from lightning_prune.models.torchvision_zoo import _replace_head

    swin = build_model("swin_t", num_classes=3)
    assert swin.head.out_features == 3 and swin.input_shape == (3, 224, 224)
    _replace_head(swin, 7)
    assert swin(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    resnext = build_model("resnext50_32x4d", num_classes=4)
    assert resnext.layer1[0].conv2.groups == 32 and resnext.fc.out_features == 4


def test_guard_stops_the_patch_merging_group_that_blows_up():
    from lightning_prune.pruning.groups import GROUP_MAX_INDICES, GroupRefused, guarded_group

    network, images = _build("swin_t")
    structure = PruningStructure(network, images[:1])
    reduction = network.get_submodule("features.6.reduction")  # refused by name; its raw group is what exploded
    with pytest.raises(GroupRefused, match=f"exceeds {GROUP_MAX_INDICES} channel indices"):
        guarded_group(structure.graph, reduction, list(range(reduction.out_features)))
