"""LeNet5-Mini, the small network of the oracle-pruning study, with its width and depth variants."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune.models.registry import check_int, register_model

_HIDDEN = 10  # filters of conv2/conv3 and width of the hidden FC layers, as in the study


@register_model("lenet5_mini")
class LeNet5Mini(nn.Module):
    """LeNet5-Mini: three 5x5 convolutions of 10 filters and two 10-wide linear layers (5,500 parameters).

    ``conv1 -> ReLU -> maxpool2 -> conv2 -> ReLU -> maxpool2 -> conv3 -> ReLU -> fc1 -> ReLU
    [-> extra_fc.i -> ReLU]* -> fc2``. A 32x32 input leaves conv3 with a 10x1x1 map.
    The module names ``conv1, conv2, conv3, fc1, fc2, extra_fc.<i>`` are what pruning patterns match.

    Args:
        num_classes: Outputs of ``fc2``.
        in_channels: Input channels (1 for MNIST-like data).
        conv1_width: Filters of ``conv1``; the study's width variants W20/W30/W40 use 20/30/40.
        extra_fc_layers: Extra 10x10 ``Linear`` + ReLU layers before ``fc2``; the study's depth
            variants D5/D6/D7/D8 have 0/1/2/3.

    Raises:
        ValueError: If an argument is not an integer in its range.
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, conv1_width: int = 10, extra_fc_layers: int = 0
    ) -> None:
        super().__init__()
        check_int("num_classes", num_classes, 1)
        check_int("in_channels", in_channels, 1)
        check_int("conv1_width", conv1_width, 1)
        check_int("extra_fc_layers", extra_fc_layers, 0)
        self.input_shape = (in_channels, 32, 32)
        self.conv1 = nn.Conv2d(in_channels, conv1_width, kernel_size=5)
        self.conv2 = nn.Conv2d(conv1_width, _HIDDEN, kernel_size=5)
        self.conv3 = nn.Conv2d(_HIDDEN, _HIDDEN, kernel_size=5)
        self.fc1 = nn.Linear(_HIDDEN, _HIDDEN)
        self.extra_fc = nn.ModuleList(nn.Linear(_HIDDEN, _HIDDEN) for _ in range(extra_fc_layers))
        self.fc2 = nn.Linear(_HIDDEN, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Classify a batch.

        Args:
            images: ``[batch, in_channels, 32, 32]``.

        Returns:
            Logits ``[batch, num_classes]``.
        """
        x = F.max_pool2d(F.relu(self.conv1(images)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x)).flatten(1)
        x = F.relu(self.fc1(x))
        for layer in self.extra_fc:
            x = F.relu(layer(x))
        return self.fc2(x)


def _register_variant(name: str, **preset: int) -> None:
    """Register ``name`` as LeNet5-Mini with ``preset`` fixed; the other arguments stay free."""

    def build(num_classes: int = 10, in_channels: int = 1) -> LeNet5Mini:
        return LeNet5Mini(num_classes=num_classes, in_channels=in_channels, **preset)

    build.__doc__ = f"LeNet5-Mini with {preset} (see :class:`LeNet5Mini`)."
    register_model(name)(build)


for _width in (20, 30, 40):
    _register_variant(f"lenet5_mini_w{_width}", conv1_width=_width)
for _depth in (6, 7, 8):
    _register_variant(f"lenet5_mini_d{_depth}", extra_fc_layers=_depth - 5)
