"""The name registry: listing, building, and its errors."""

import pytest
from torch import nn

from lightning_prune.models import LeNet5Mini, available_models, build_model, register_model, registry

EXPECTED_NAMES = [
    "cifar_resnet110",
    "cifar_resnet20",
    "cifar_resnet32",
    "cifar_resnet56",
    "lenet5_mini",
    "lenet5_mini_d6",
    "lenet5_mini_d7",
    "lenet5_mini_d8",
    "lenet5_mini_w20",
    "lenet5_mini_w30",
    "lenet5_mini_w40",
    "resnet18",
    "resnet50",
    "resnext50_32x4d",
    "swin_t",
    "vgg11_bn",
    "vgg13_bn",
    "vgg16_bn",
    "vgg19_bn",
    "vit_b_16",
]


def test_available_models_lists_every_registered_name_sorted():
    assert available_models() == EXPECTED_NAMES


def test_build_model_passes_kwargs_to_the_builder():
    model = build_model("lenet5_mini", num_classes=7, in_channels=3)
    assert isinstance(model, LeNet5Mini)
    assert model.fc2.out_features == 7 and model.conv1.in_channels == 3


def test_build_model_unknown_name_lists_choices():
    with pytest.raises(ValueError, match=r"`model` must be one of \['cifar_resnet110', .*'vit_b_16'\], got 'lenet7'"):
        build_model("lenet7")


def test_build_model_unknown_kwarg_names_it_and_the_valid_ones():
    with pytest.raises(
        TypeError,
        match=r"arguments of model 'cifar_resnet20' must be among \['num_classes'\], "
        r"got unexpected \['widht'\]",
    ):
        build_model("cifar_resnet20", widht=2)


def test_build_model_forwards_any_kwarg_to_a_var_keyword_builder(monkeypatch):
    received = {}

    def builder(**kwargs):
        received.update(kwargs)
        return nn.Identity()

    monkeypatch.setitem(registry._MODEL_BUILDERS, "catch_all", builder)
    assert isinstance(build_model("catch_all", anything=1), nn.Identity)
    assert received == {"anything": 1}


def test_register_model_rejects_a_taken_name():
    with pytest.raises(ValueError, match=r"`name` must be a model name not yet registered, got 'lenet5_mini'"):
        register_model("lenet5_mini")(LeNet5Mini)


def test_register_model_returns_the_builder_and_registers_it(monkeypatch):
    monkeypatch.setattr(registry, "_MODEL_BUILDERS", dict(registry._MODEL_BUILDERS))

    def tiny(num_classes: int = 2) -> nn.Module:
        return nn.Linear(3, num_classes)

    assert register_model("tiny_linear")(tiny) is tiny
    assert "tiny_linear" in available_models()
    assert build_model("tiny_linear", num_classes=5).out_features == 5
