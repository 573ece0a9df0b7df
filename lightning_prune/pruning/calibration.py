"""What data-driven criteria read: calibration batches and a loss function (shared by `importance` and `oracle`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Batch = tuple[torch.Tensor, torch.Tensor]
"""`(inputs [B, ...], targets [B])` on the network's device."""

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""`loss_fn(outputs, targets) -> scalar` (a batch mean)."""


def require_batches(batches: Sequence[Batch], criterion: str) -> None:
    """Raise if a data-driven `criterion` got no calibration batch."""
    if len(batches) == 0:
        raise ValueError(f"criterion {criterion!r} must get at least one calibration batch, got none.")
