"""torchvision networks: shapes, head replacement and weight names, without downloading anything."""

import pytest
import torch
from torchvision.models import ResNet18_Weights, ViT_B_16_Weights, WeightsEnum

from lightning_prune.models import build_model, resolve_weights, torchvision_zoo
from lightning_prune.models.torchvision_zoo import _replace_head


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_resnet_output_shape(name):
    model = build_model(name, num_classes=5)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    assert model.fc.out_features == 5 and model.input_shape == (3, 224, 224)


def test_vit_b_16_tiny_image_size_and_head_replacement():
    model = build_model("vit_b_16", image_size=32, num_classes=3)
    images = torch.randn(2, 3, 32, 32)
    assert model(images).shape == (2, 3)
    assert model.input_shape == (3, 32, 32)
    _replace_head(model, 7)
    assert model(images).shape == (2, 7)


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        (None, None),
        ("DEFAULT", ResNet18_Weights.IMAGENET1K_V1),
        ("IMAGENET1K_V1", ResNet18_Weights.IMAGENET1K_V1),
        ("ResNet18_Weights.IMAGENET1K_V1", ResNet18_Weights.IMAGENET1K_V1),
    ],
)
def test_resolve_weights_accepts_member_and_qualified_names(weights, expected):
    assert resolve_weights("resnet18", weights) is expected


def test_resolve_weights_unknown_name_lists_valid_ones():
    with pytest.raises(
        ValueError,
        match=r"`weights` of resnet18 must be None or one of \['IMAGENET1K_V1', 'DEFAULT'\], "
        r"got 'IMAGENET1K_V9'",
    ):
        build_model("resnet18", weights="IMAGENET1K_V9")


def test_pretrained_weights_are_loaded_then_the_head_replaced(monkeypatch):
    torch.manual_seed(0)
    reference = build_model("resnet18").state_dict()
    loaded = []

    def fake_get_state_dict(self, *args, **kwargs):  # stands in for the download
        loaded.append(self)
        return reference

    monkeypatch.setattr(WeightsEnum, "get_state_dict", fake_get_state_dict)
    model = build_model("resnet18", weights="DEFAULT", num_classes=10)
    assert loaded == [ResNet18_Weights.IMAGENET1K_V1]
    torch.testing.assert_close(model.layer4[1].conv2.weight, reference["layer4.1.conv2.weight"])
    assert model.fc.out_features == 10 and model.fc.in_features == 512


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": 40}, r"`image_size` must be a multiple of the patch size 16, got 40"),
        ({"image_size": 8}, r"`image_size` must be an integer >= 16, got 8"),
        (
            {"image_size": 32, "weights": "IMAGENET1K_SWAG_E2E_V1"},
            r"`image_size` must be 384 \(or None\) with weights 'IMAGENET1K_SWAG_E2E_V1', got 32",
        ),
        ({"weights": "imagenet"}, r"`weights` of vit_b_16 must be None or one of \['IMAGENET1K_V1', "),
    ],
)
def test_vit_b_16_rejects_bad_image_size_or_weights(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model("vit_b_16", **kwargs)


@pytest.mark.parametrize(("weights", "expected_size"), [(None, 224), ("IMAGENET1K_SWAG_E2E_V1", 384)])
def test_vit_b_16_image_size_defaults_to_the_weights_size(monkeypatch, weights, expected_size):
    calls = []

    def fake_get_model(name, **kwargs):  # records the call instead of building 86M parameters
        calls.append((name, kwargs))
        return torch.nn.Identity()

    monkeypatch.setattr(torchvision_zoo.tv_models, "get_model", fake_get_model)
    model = build_model("vit_b_16", weights=weights)
    expected_weights = None if weights is None else ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1
    assert calls == [("vit_b_16", {"weights": expected_weights, "num_classes": 1000, "image_size": expected_size})]
    assert model.input_shape == (3, expected_size, expected_size)


def test_torchvision_num_classes_is_checked():
    with pytest.raises(ValueError, match=r"`num_classes` must be an integer >= 1, got 0"):
        build_model("resnet18", num_classes=0)
