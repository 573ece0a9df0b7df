"""Tiny networks whose pruning structure is known by construction, shared by the pruning tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import VisionTransformer


class ToyCNN(nn.Module):
    """conv1(1->6)+BN -> pool -> conv2(6->4) -> pool -> flatten(4x2x2) -> fc1(16->5) -> fc2(5->3); input [B,1,8,8]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
        self.fc1 = nn.Linear(16, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, width: int, inner: int) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(width, inner, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(inner)
        self.conv_b = nn.Conv2d(inner, width, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn_b(self.conv_b(F.relu(self.bn_a(self.conv_a(x))))))


class ToyResNet(nn.Module):
    """stem conv(3->8)+BN, two residual blocks (8->6->8), pool, fc(8->3): stem and both conv_b are coupled."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.blocks = nn.Sequential(Block(8, 6), Block(8, 6))
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def randomize_batchnorm(network: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN affine parameters and running statistics, so that pruning mistakes show in the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
    return network


def tiny_vit(num_classes: int = 5) -> VisionTransformer:
    """torchvision's VisionTransformer at 32x32, 2 layers, 4 heads of 8, MLP 64 (random non-zero head)."""
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64,
                            num_classes=num_classes)
    nn.init.normal_(vit.heads.head.weight)
    return vit


def random_batches(shape: tuple[int, ...], count: int = 2, batch: int = 8, classes: int = 3, seed: int = 0):
    """`count` batches of standard-normal inputs `[batch, *shape]` and integer labels."""
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, *shape, generator=generator), torch.randint(0, classes, (batch,), generator=generator))
        for _ in range(count)
    ]
