"""Argument checks and the per-sample ``DataLoader`` shared by the DataModules."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

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


class EpochRandomSampler(RandomSampler):
    """A random order drawn from ``(seed, epoch)``, with ``set_epoch`` as ``DistributedSampler`` has.

    Lightning's fit loop calls ``set_epoch`` with the epoch about to run at every epoch start, also when a fit resumes
    from a checkpoint, so a resumed fit sees the order an uninterrupted one would (a generator advanced epoch by epoch
    would restart at epoch 0's order). Outside Lightning each pass moves on to the next epoch's order. Under DDP,
    Lightning replaces it, as any ``RandomSampler``, by a ``DistributedSampler``.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        super().__init__(dataset)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_generator(self) -> torch.Generator:
        """The generator of the epoch about to run, drawn from `(seed, epoch)` alone; moves on to the next epoch."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        return generator

    def __iter__(self) -> Iterator[int]:
        yield from torch.randperm(len(self.data_source), generator=self.epoch_generator()).tolist()


def sample_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int) -> DataLoader:
    """A standard ``DataLoader`` that decodes and transforms image by image (for data not held in memory).

    Shuffling follows :class:`EpochRandomSampler`: the order changes every epoch, repeats per seed, and a resumed
    fit continues with the order of the epoch it resumes at.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochRandomSampler(dataset, seed) if shuffle else None,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )


class SplitLoaders:
    """The train / train-eval / validation / test loaders of a DataModule whose splits are held datasets.

    Mixed in before ``LightningDataModule`` by the language DataModules (text, Alpaca, LLaVA instructions), which
    implement :meth:`_split_dataset` (and :meth:`_collate` when items need one). Training shuffles with
    :class:`EpochRandomSampler`, so a resumed fit sees the data order of an uninterrupted one, as the image loaders
    do; ``train_eval_dataloader`` serves the training split in order; validation and test serve the held-out split.
    The host sets ``batch_size``, ``eval_batch_size`` and ``seed``.
    """

    batch_size: int
    eval_batch_size: int
    seed: int

    def _split_dataset(self, split: str) -> Dataset:
        """The dataset of ``split`` ("train" or "val"), set up."""
        raise NotImplementedError

    def _collate(self) -> Callable | None:
        """The loaders' ``collate_fn`` (None: PyTorch's default)."""
        return None

    def _split_loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        dataset = self._split_dataset(split)
        sampler = EpochRandomSampler(dataset, self.seed) if shuffle else None
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=self._collate())

    def train_dataloader(self) -> DataLoader:
        return self._split_loader("train", self.batch_size, shuffle=True)

    def train_eval_dataloader(self) -> DataLoader:
        """The training split in order, unshuffled (what ``pruned/train_loss`` is measured on)."""
        return self._split_loader("train", self.eval_batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return self._split_loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._split_loader("val", self.eval_batch_size, shuffle=False)
