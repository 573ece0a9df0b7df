"""ResNet-20/32/56/110 for CIFAR (He et al., 2016, section 4.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune.models.registry import check_int, is_int, register_model

_STAGE_WIDTHS = (16, 32, 64)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection.

    The shortcut is the identity when the shape is kept and a 1x1 conv + BN projection (option B) when the
    block changes width or stride.

    Args:
        in_channels: Channels of the input.
        out_channels: Channels of the output.
        stride: Stride of ``conv1`` and of the projection.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, in_channels, h, w] -> [batch, out_channels, h / stride, w / stride]``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al.: a 3x3 stem, three stages of n basic blocks (16/32/64 channels), a linear head.

    ``depth = 6n + 2``: 20, 32, 56 and 110 are registered as ``cifar_resnet20/32/56/110``.

    Shortcuts use option B (a 1x1 conv + BN projection where the shape changes, identity elsewhere) rather than the
    paper's option A (stride-2 subsampling plus zero-padded channels). Option A is a parameter-free lambda that
    Torch-Pruning's DependencyGraph cannot trace, so the channels of a stage could not be pruned together; option B
    adds two projections (ResNet-56: 855,770 parameters instead of 853,018).

    Module names: ``conv1, bn1, layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2,shortcut.0,shortcut.1}, fc``. Convs and the
    head use Kaiming-normal init (fan_out for convs); BatchNorm starts at weight 1 and bias 0.

    Args:
        depth: Number of weighted layers, ``6n + 2`` with ``n >= 1``.
        num_classes: Outputs of ``fc``.

    Raises:
        ValueError: If ``depth`` is not ``6n + 2`` or ``num_classes`` is below 1.
    """

    def __init__(self, depth: int = 56, num_classes: int = 10) -> None:
        super().__init__()
        check_int("num_classes", num_classes, 1)
        if not is_int(depth, 8) or (depth - 2) % 6:
            raise ValueError(f"`depth` must be 6n + 2 with n >= 1 (e.g. 20, 32, 56, 110), got {depth!r}.")
        blocks_per_stage = (depth - 2) // 6
        self.input_shape = (3, 32, 32)
        self.conv1 = nn.Conv2d(3, _STAGE_WIDTHS[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STAGE_WIDTHS[0])
        in_channels = _STAGE_WIDTHS[0]
        stages = []
        for index, width in enumerate(_STAGE_WIDTHS):
            first_stride = 1 if index == 0 else 2
            blocks = [BasicBlock(in_channels, width, first_stride)]
            blocks += [BasicBlock(width, width, 1) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(_STAGE_WIDTHS[-1], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Classify a batch.

        Args:
            images: ``[batch, 3, height, width]`` (32x32 for CIFAR).

        Returns:
            Logits ``[batch, num_classes]``.
        """
        x = F.relu(self.bn1(self.conv1(images)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model("cifar_resnet20")
def cifar_resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet-20 for CIFAR (3 blocks per stage)."""
    return CifarResNet(20, num_classes)


@register_model("cifar_resnet32")
def cifar_resnet32(num_classes: int = 10) -> CifarResNet:
    """ResNet-32 for CIFAR (5 blocks per stage)."""
    return CifarResNet(32, num_classes)


@register_model("cifar_resnet56")
def cifar_resnet56(num_classes: int = 10) -> CifarResNet:
    """ResNet-56 for CIFAR (9 blocks per stage)."""
    return CifarResNet(56, num_classes)


@register_model("cifar_resnet110")
def cifar_resnet110(num_classes: int = 10) -> CifarResNet:
    """ResNet-110 for CIFAR (18 blocks per stage)."""
    return CifarResNet(110, num_classes)
