"""LeNet5-Mini and its width/depth variants."""

import pytest
import torch
from torch import nn

from lightning_prune.models import LeNet5Mini, build_model


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _hand_count(conv1_width: int = 10, extra_fc_layers: int = 0, in_channels: int = 1, num_classes: int = 10) -> int:
    conv1 = conv1_width * in_channels * 25 + conv1_width
    conv2 = 10 * conv1_width * 25 + 10
    conv3 = 10 * 10 * 25 + 10
    hidden_fc = (1 + extra_fc_layers) * (10 * 10 + 10)
    fc2 = 10 * num_classes + num_classes
    return conv1 + conv2 + conv3 + hidden_fc + fc2


def test_lenet5_mini_has_exactly_5500_parameters():
    assert _hand_count() == 5500
    assert _count(build_model("lenet5_mini")) == 5500


@pytest.mark.parametrize(
    ("name", "width", "extra"),
    [
        ("lenet5_mini_w20", 20, 0),
        ("lenet5_mini_w30", 30, 0),
        ("lenet5_mini_w40", 40, 0),
        ("lenet5_mini_d6", 10, 1),
        ("lenet5_mini_d7", 10, 2),
        ("lenet5_mini_d8", 10, 3),
    ],
)
def test_lenet5_mini_variant_parameter_count_matches_hand_formula(name, width, extra):
    model = build_model(name, num_classes=4, in_channels=3)
    assert model.conv1.out_channels == width and len(model.extra_fc) == extra
    assert _count(model) == _hand_count(width, extra, in_channels=3, num_classes=4)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_lenet5_mini_module_names_match_pruning_patterns():
    names = {name for name, module in build_model("lenet5_mini_d7").named_modules() if list(module.parameters())}
    assert {"conv1", "conv2", "conv3", "fc1", "fc2", "extra_fc.0", "extra_fc.1"} <= names


def test_lenet5_mini_conv3_output_is_10x1x1():
    model = LeNet5Mini()
    shapes = []
    model.conv3.register_forward_hook(lambda module, args, output: shapes.append(tuple(output.shape)))
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert shapes == [(2, 10, 1, 1)]
    assert model.input_shape == (1, 32, 32)


def test_lenet5_mini_forward_matches_hand_built_network():
    torch.manual_seed(0)
    model = LeNet5Mini(conv1_width=20, extra_fc_layers=1).eval()
    reference = nn.Sequential(
        model.conv1,
        nn.ReLU(),
        nn.MaxPool2d(2),
        model.conv2,
        nn.ReLU(),
        nn.MaxPool2d(2),
        model.conv3,
        nn.ReLU(),
        nn.Flatten(),
        model.fc1,
        nn.ReLU(),
        model.extra_fc[0],
        nn.ReLU(),
        model.fc2,
    )
    images = torch.randn(3, 1, 32, 32)
    torch.testing.assert_close(model(images), reference(images))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 0}, r"`num_classes` must be an integer >= 1, got 0"),
        ({"in_channels": 1.5}, r"`in_channels` must be an integer >= 1, got 1.5"),
        ({"conv1_width": True}, r"`conv1_width` must be an integer >= 1, got True"),
        ({"extra_fc_layers": -1}, r"`extra_fc_layers` must be an integer >= 0, got -1"),
    ],
)
def test_lenet5_mini_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LeNet5Mini(**kwargs)


def test_lenet5_mini_variant_rejects_overriding_its_preset():
    with pytest.raises(TypeError, match=r"got unexpected \['conv1_width'\]"):
        build_model("lenet5_mini_w20", conv1_width=10)
