"""VGG-11/13/16/19 with BatchNorm, sized for 32x32 CIFAR images."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lightning_prune.models.registry import check_int, register_model

_POOL = "M"
# Conv widths per configuration of Simonyan & Zisserman (2015), "M" a 2x2 max-pool.
_CONFIGS: dict[str, list[int | str]] = {
    "A": [64, _POOL, 128, _POOL, 256, 256, _POOL, 512, 512, _POOL, 512, 512, _POOL],
    "B": [64, 64, _POOL, 128, 128, _POOL, 256, 256, _POOL, 512, 512, _POOL, 512, 512, _POOL],
    "D": [64, 64, _POOL, 128, 128, _POOL, 256, 256, 256, _POOL, 512, 512, 512, _POOL, 512, 512, 512, _POOL],
    "E": [64, 64, _POOL, 128, 128, _POOL, 256, 256, 256, 256, _POOL, 512, 512, 512, 512, _POOL]
    + [512, 512, 512, 512, _POOL],
}


class CifarVGG(nn.Module):
    """VGG with BatchNorm for CIFAR: ``features`` then one ``classifier`` Linear(512, num_classes).

    ``features`` is a ``Sequential`` of ``Conv2d(3x3, padding 1) -> BatchNorm2d -> ReLU`` triples and 2x2 max-pools.
    Five pools take a 32x32 image to 1x1; a global average pool keeps other sizes (multiples of 32) working.
    Convs use Kaiming-normal init (fan_out), BatchNorm weight 1 / bias 0, the classifier N(0, 0.01).

    Args:
        config: ``"A"`` (VGG-11), ``"B"`` (VGG-13), ``"D"`` (VGG-16) or ``"E"`` (VGG-19).
        num_classes: Outputs of ``classifier``.

    Raises:
        ValueError: If ``config`` is unknown or ``num_classes`` is below 1.
    """

    def __init__(self, config: Literal["A", "B", "D", "E"] = "E", num_classes: int = 10) -> None:
        super().__init__()
        if config not in _CONFIGS:
            raise ValueError(f"`config` must be one of {sorted(_CONFIGS)}, got {config!r}.")
        check_int("num_classes", num_classes, 1)
        self.input_shape = (3, 32, 32)
        layers: list[nn.Module] = []
        in_channels = 3
        for item in _CONFIGS[config]:
            if item == _POOL:
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(in_channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU()]
                in_channels = item
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Classify a batch.

        Args:
            images: ``[batch, 3, height, width]`` (32x32 for CIFAR).

        Returns:
            Logits ``[batch, num_classes]``.
        """
        return self.classifier(self.pool(self.features(images)).flatten(1))


@register_model("vgg11_bn")
def vgg11_bn(num_classes: int = 10) -> CifarVGG:
    """VGG-11 with BatchNorm for CIFAR (8 convs)."""
    return CifarVGG("A", num_classes)


@register_model("vgg13_bn")
def vgg13_bn(num_classes: int = 10) -> CifarVGG:
    """VGG-13 with BatchNorm for CIFAR (10 convs)."""
    return CifarVGG("B", num_classes)


@register_model("vgg16_bn")
def vgg16_bn(num_classes: int = 10) -> CifarVGG:
    """VGG-16 with BatchNorm for CIFAR (13 convs)."""
    return CifarVGG("D", num_classes)


@register_model("vgg19_bn")
def vgg19_bn(num_classes: int = 10) -> CifarVGG:
    """VGG-19 with BatchNorm for CIFAR (16 convs)."""
    return CifarVGG("E", num_classes)
