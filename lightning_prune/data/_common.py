"""Argument checks and the per-sample ``DataLoader`` shared by the DataModules."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from lightning_prune._checks import check_int

# One check for models and data alike; `check_at_least` is its former name here, still imported by video_qa.py.
check_at_least = check_int


def check_choice(name: str, value: object, choices: tuple) -> None:
    """Raise ``ValueError`` if ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, choices))}, got {value!r}.")


def parse_device(device: str | None) -> torch.device | None:
    """Turn a device string ("cpu", "cuda", "cuda:1", ...) into a ``torch.device``; None stays None."""
    if device is None:
        return None
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"`device` must be a torch device such as 'cpu' or 'cuda:0', got {device!r}.") from error


def sample_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int) -> DataLoader:
    """A standard ``DataLoader`` that decodes and transforms image by image (for data not held in memory).

    Shuffling draws from a generator seeded with ``seed``: the order changes every epoch and repeats per seed.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
    )
