"""CIFAR ResNets: shapes, parameter counts, names, init, and Torch-Pruning traceability of option-B shortcuts."""

import math

import pytest
import torch
import torch_pruning as tp

from lightning_prune.models import CifarResNet, build_model


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _option_b_parameter_count(depth: int, num_classes: int) -> int:
    """Closed form: stem, 3 stages of n blocks (two 3x3 convs + 2 BNs each), two 1x1 projections, head."""
    n = (depth - 2) // 6
    total = 3 * 16 * 9 + 2 * 16
    previous = 16
    for width in (16, 32, 64):
        total += n * (2 * 9 * width * width + 4 * width)  # every block as if width -> width
        total += 9 * (previous - width) * width  # the first block's conv1 reads `previous` channels instead
        if previous != width:
            total += previous * width + 2 * width  # 1x1 projection + BN
        previous = width
    return total + 64 * num_classes + num_classes


@pytest.mark.parametrize("depth", [20, 32, 56, 110])
def test_cifar_resnet_shape_and_parameter_count(depth):
    model = build_model(f"cifar_resnet{depth}", num_classes=100)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert _count(model) == _option_b_parameter_count(depth, 100)
    assert len(model.layer1) == len(model.layer2) == len(model.layer3) == (depth - 2) // 6


def test_cifar_resnet56_has_about_086m_parameters():
    assert _count(build_model("cifar_resnet56")) == 855_770


def test_cifar_resnet_module_names_and_projection_only_where_shape_changes():
    names = {name for name, _ in build_model("cifar_resnet20").named_modules()}
    expected = {
        "conv1",
        "bn1",
        "layer1.0.conv1",
        "layer1.0.bn1",
        "layer1.0.conv2",
        "layer1.0.bn2",
        "layer3.2.conv2",
        "fc",
    }
    assert expected <= names
    projections = sorted(name.removesuffix(".0") for name in names if name.endswith("shortcut.0"))
    assert projections == ["layer2.0.shortcut", "layer3.0.shortcut"]


def test_cifar_resnet_kaiming_init_std():
    torch.manual_seed(0)
    weight = CifarResNet(20).layer3[1].conv2.weight  # 64 x 64 x 3 x 3: fan_out = 576
    assert weight.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.03)
    assert torch.all(CifarResNet(20).bn1.weight == 1)


@pytest.mark.parametrize("depth", [7, 22, 2, "20"])
def test_cifar_resnet_rejects_depth_not_6n_plus_2(depth):
    with pytest.raises(ValueError, match=r"`depth` must be 6n \+ 2 with n >= 1"):
        CifarResNet(depth)


def test_cifar_resnet_rejects_bad_num_classes():
    with pytest.raises(ValueError, match=r"`num_classes` must be an integer >= 1, got 0"):
        CifarResNet(20, num_classes=0)


def test_cifar_resnet_is_traceable_by_torch_pruning():
    model = CifarResNet(20).eval()
    example = torch.randn(1, 3, 32, 32)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    # A block-internal conv: only that conv's filters, its BN and the next conv's inputs change.
    graph.get_pruning_group(model.layer2[1].conv1, tp.prune_conv_out_channels, idxs=list(range(16))).prune()
    assert model.layer2[1].conv1.out_channels == 16 and model.layer2[1].conv2.in_channels == 16
    # The residual stream of stage 3 couples the projection, every block's conv2 and the head.
    graph.get_pruning_group(model.layer3[0].conv2, tp.prune_conv_out_channels, idxs=[0, 1, 2, 3]).prune()
    assert model.layer3[0].shortcut[0].out_channels == 60
    assert model.layer3[2].conv2.out_channels == 60 and model.fc.in_features == 60
    assert model(example).shape == (1, 10)
