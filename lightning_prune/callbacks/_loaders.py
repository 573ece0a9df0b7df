"""The data loaders callbacks measure on, found through the public Trainer API only.

Callbacks measure a model (``pruned/*``, ``pre/*``) outside Lightning's loops, on two loaders:
  - the training split, preferably with evaluation transforms and no shuffling: a DataModule (or LightningModule)
    that follows `contracts.TrainEvalData` gives it; otherwise the training loader is used and one line says so;
  - the evaluation split: the first validation loader, the same split ``val/*`` (and hence the retrain history,
    ``final/*`` and ``post/*``) is logged from, so before- and after-retraining numbers compare one split.

``trainer.train_dataloader`` is set by the fit loop from ``on_train_start`` on, ``trainer.val_dataloaders`` from the
first validation (the sanity check included); before that, the loader methods of the DataModule or the
LightningModule are called. Loaders passed directly to ``trainer.fit(model, train_loader, val_loader)`` are only
known from those points on.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.seed import isolate_rng

from lightning_prune.contracts import TrainEvalData
from lightning_prune.pruning.distributed import rank_batches
from lightning_prune.pruning.inputs import first_example, to_device


def _first(loaders: Any) -> Any:
    if isinstance(loaders, (list, tuple)):
        return loaders[0] if loaders else None
    if isinstance(loaders, dict):
        return next(iter(loaders.values()), None)
    return loaders


def _from_sources(trainer: Trainer, method: str) -> Any:
    """A loader from the DataModule's or the LightningModule's own `method`, when one defines it."""
    for source in (trainer.datamodule, trainer.lightning_module):
        if source is not None and is_overridden(method, source):
            return _first(getattr(source, method)())
    return None


def train_loader(trainer: Trainer) -> Any:
    """The training loader (shuffled, training transforms), or None when none is known yet."""
    if trainer.train_dataloader is not None:
        return _first(trainer.train_dataloader)
    return _from_sources(trainer, "train_dataloader")


def train_eval_loader(trainer: Trainer, who: str | None = None) -> Any:
    """The training split for measurement: `train_eval_dataloader()` when the data offers it, else the training loader.

    Args:
        trainer: The Trainer.
        who: The caller's name, for the log line saying that the training loader is used instead; None: no line.
    """
    for source in (trainer.datamodule, trainer.lightning_module):
        if isinstance(source, TrainEvalData):
            return source.train_eval_dataloader()
    loader = train_loader(trainer)
    if loader is not None and who is not None:
        rank_zero_info(
            f"{who}: the data has no `train_eval_dataloader()`, so the training split is measured through the "
            "training loader (training transforms); add that method to the DataModule to measure it without them."
        )
    return loader


def eval_loader(trainer: Trainer) -> Any:
    """The first validation loader, or None when there is none."""
    if trainer.val_dataloaders is not None:
        return _first(trainer.val_dataloaders)
    return _from_sources(trainer, "val_dataloader")


def has_train_data(trainer: Trainer) -> bool:
    """Whether a training loader is known (always true from `on_train_start` on)."""
    return train_loader(trainer) is not None


def first_inputs(loader: Any) -> Any:
    """The inputs `x` of the first batch of `loader` (batches are `(x, y, ...)` or `x`)."""
    batch = next(iter(loader))
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def calibration_batches(trainer: Trainer, count: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` training batches (eval-transform loader if the data has one), on `device`.

    In one process the first `count`; under DDP rank r takes batches r, r + world, ... so the ranks' union is the
    first `world * count` batches, which the criteria then reduce over.
    """
    with isolate_rng():  # reading batches must not shift the training shuffle
        loader = train_eval_loader(trainer)
        return [(to_device(batch[0], device), batch[1].to(device)) for batch in rank_batches(loader, count)]


def example_input(trainer: Trainer, module: Any, recorded: dict[str, Any] | None) -> tuple[Any, dict | None]:
    """The tracing input and its record `{"shape", "dtype"}`: `recorded` if given (a resumed fit), else the module's
    `example_input_array` or the first training inputs (one example; keyword inputs are not recorded).

    Raises:
        ValueError: With neither an `example_input_array` nor train data.
    """
    if recorded is None:
        example = getattr(module, "example_input_array", None)
        if not isinstance(example, torch.Tensor):
            loader = train_eval_loader(trainer)
            if loader is None:
                raise ValueError("Pruning must trace the network on an input, got no `example_input_array` "
                                 "and no train data.")
            with isolate_rng():  # reading a batch must not shift the training shuffle
                example = first_inputs(loader)
        if isinstance(example, dict):  # keyword inputs (a multimodal batch): trace on the first example
            return first_example(example), None
        recorded = {"shape": [1, *example.shape[1:]], "dtype": str(example.dtype).removeprefix("torch.")}
    return torch.zeros(recorded["shape"], dtype=getattr(torch, recorded["dtype"])), recorded
