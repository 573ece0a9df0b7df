"""CIFAR VGGs with BatchNorm."""

import pytest
import torch
from torch import nn

from lightning_prune.models import CifarVGG, build_model

CONV_WIDTHS = {
    "vgg11_bn": [64, 128, 256, 256, 512, 512, 512, 512],
    "vgg13_bn": [64, 64, 128, 128, 256, 256, 512, 512, 512, 512],
    "vgg16_bn": [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512],
    "vgg19_bn": [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512],
}


@pytest.mark.parametrize("name", sorted(CONV_WIDTHS))
def test_vgg_shape_convs_and_parameter_count(name):
    model = build_model(name, num_classes=100)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [conv.out_channels for conv in convs] == CONV_WIDTHS[name]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 5
    positions = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    assert all(
        isinstance(model.features[i + 1], nn.BatchNorm2d) and isinstance(model.features[i + 2], nn.ReLU)
        for i in positions
    )
    in_channels = [3, *CONV_WIDTHS[name][:-1]]
    expected = sum(
        9 * c_in * c_out + c_out + 2 * c_out for c_in, c_out in zip(in_channels, CONV_WIDTHS[name], strict=True)
    )
    expected += 512 * 100 + 100
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_vgg19_has_16_convs():
    assert len(CONV_WIDTHS["vgg19_bn"]) == 16  # the widths the parametrized test checks the built model against


def test_vgg_rejects_unknown_config():
    with pytest.raises(ValueError, match=r"`config` must be one of \['A', 'B', 'D', 'E'\], got 'C'"):
        CifarVGG("C")


def test_vgg_rejects_bad_num_classes():
    with pytest.raises(ValueError, match=r"`num_classes` must be an integer >= 1, got -3"):
        CifarVGG("A", num_classes=-3)
