"""Train/eval flags of a network, put back after a measurement (scoring, evaluating, tracing)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def modes_restored(network: nn.Module, evaluate: bool = True) -> Iterator[nn.Module]:
    """Run the block with `network` in eval mode (unless `evaluate` is False), then restore every module's flag.

    Per-module flags are restored, not a blanket `train()`: a user may keep some submodules (a frozen BatchNorm) in
    eval mode while training.
    """
    modes = {module: module.training for module in network.modules()}
    try:
        if evaluate:
            network.eval()
        yield network
    finally:
        for module, training in modes.items():
            module.training = training
