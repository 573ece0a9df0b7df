"""What the callbacks may ask of a LightningModule and of a DataModule, as `typing.Protocol`s (a leaf: imports
nothing of the project). Everything is optional: a module or DataModule that lacks a member gets the default
named on each protocol, so user projects need nothing of this package.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class HasLossFn(Protocol):
    """A module whose `loss_fn(outputs, targets) -> scalar` scores calibration batches (default: cross-entropy)."""

    def loss_fn(self, outputs: Any, targets: Any) -> torch.Tensor: ...


@runtime_checkable
class EvaluatesNetwork(Protocol):
    """A module that says how its network is measured: `evaluate_network(network, loader, device) -> (loss, acc)`
    (a causal LM: next-token loss and accuracy; default: a classifier's cross-entropy and top-1 accuracy)."""

    def evaluate_network(self, network: torch.nn.Module, loader: Iterable, device: Any) -> tuple[float, float]: ...


@runtime_checkable
class StartsRetrain(Protocol):
    """A module that switches to its retrain recipe (optimizer, LR schedule) when pruning is done."""

    def start_retrain(self) -> None: ...


@runtime_checkable
class TrainEvalData(Protocol):
    """A DataModule that also serves its training split with evaluation transforms, unshuffled."""

    def train_eval_dataloader(self) -> Iterable: ...


@runtime_checkable
class SeededData(Protocol):
    """A DataModule whose shuffles and draws follow `seed` (the study sets it per trial)."""

    seed: int


@runtime_checkable
class VocabData(Protocol):
    """A text DataModule whose tokenizer has `vocab_size` tokens (a causal LM checks its embeddings cover them)."""

    vocab_size: int
