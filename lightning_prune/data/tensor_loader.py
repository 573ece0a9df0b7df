"""A light batch loader over tensors held in memory, and batch-level augmentations.

Small datasets (MNIST variants, CIFAR) are decoded once into tensors; serving a batch is then one index
operation, with no per-sample ``__getitem__`` and no collate. Lightning accepts any re-iterable object with
``__len__`` as a dataloader, so this loader plugs in where a ``DataLoader`` would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

BatchTransform = Callable[[Tensor, torch.Generator], Tensor]


class EpochOrder:
    """Which epoch's permutation a `TensorBatchLoader` serves next.

    Exposed as the loader's ``sampler`` because that is where Lightning's fit loop calls ``set_epoch`` at the start
    of every epoch (as it does for ``DistributedSampler``), with the number of the epoch about to run, also when a
    fit resumes from a checkpoint. The loader cannot know that epoch itself when it is built.
    """

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class TensorBatchLoader:
    """Serve ``(images, labels)`` batches by indexing tensors directly.

    Each pass over the loader is one epoch. With ``shuffle`` the order is a permutation drawn from a generator
    seeded with ``(seed, epoch)``: it changes from epoch to epoch and is the same for the same seed. With
    ``num_replicas > 1`` every replica takes an interleaved share of the same permutation (padded by wrapping
    around so that all replicas see the same number of batches), as ``DistributedSampler`` does.

    Args:
        images: Images, shape [N, C, H, W], on the device the batches should come from.
        labels: Labels, shape [N], on the same device.
        batch_size: Images per batch.
        shuffle: Draw a fresh permutation every epoch; otherwise serve the stored order.
        drop_last: Drop a last batch smaller than ``batch_size``.
        seed: Seed of the permutations and of ``transform``'s randomness.
        transform: Applied to every batch of images (e.g. random crop and flip): ``transform(batch, generator)``.
        num_replicas: Number of processes sharing the data (distributed training).
        rank: This process's index among them.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        transform: BatchTransform | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"`images` and `labels` must have the same length, got {len(images)} and {len(labels)}.")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be at least 1, got {batch_size}.")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"`rank` must be in [0, num_replicas={num_replicas}), got {rank}.")
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.transform = transform
        self.num_replicas = num_replicas
        self.rank = rank
        self.sampler = EpochOrder()
        self.batch_sampler = None  # what Lightning reads beside `sampler`: none here

    @property
    def epoch(self) -> int:
        """The epoch whose permutation the next pass uses."""
        return self.sampler.epoch

    @property
    def num_samples(self) -> int:
        """How many samples this replica serves per epoch."""
        return -(-len(self.images) // self.num_replicas)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Choose which epoch's permutation the next pass uses (the pass after it uses ``epoch + 1``)."""
        self.sampler.set_epoch(epoch)

    def _epoch_generator(self) -> torch.Generator:
        # One seed per (seed, epoch) so an epoch's order does not depend on how often the loader was iterated before.
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def _indices(self, generator: torch.Generator) -> Tensor | None:
        """This replica's sample order, shape [num_samples], or None for the stored order as is."""
        total = len(self.images)
        if not self.shuffle and self.num_replicas == 1:
            return None
        order = torch.randperm(total, generator=generator) if self.shuffle else torch.arange(total)
        padded = self.num_samples * self.num_replicas
        if padded > total:
            order = torch.cat([order, order[: padded - total]])
        return order[self.rank :: self.num_replicas].to(self.images.device)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        generator = self._epoch_generator()
        indices = self._indices(generator)
        self.set_epoch(self.epoch + 1)  # outside Lightning (which sets it every epoch) passes follow each other
        for batch in range(len(self)):
            start, stop = batch * self.batch_size, min((batch + 1) * self.batch_size, self.num_samples)
            if indices is None:
                # Slices are views: no copy at all for the unshuffled eval pass.
                images, labels = self.images[start:stop], self.labels[start:stop]
            else:
                chosen = indices[start:stop]
                images, labels = self.images.index_select(0, chosen), self.labels.index_select(0, chosen)
            if self.transform is not None:
                images = self.transform(images, generator)
            yield images, labels


def random_crop_flip(
    images: Tensor, generator: torch.Generator, padding: int, fill: Tensor, flip: bool = True
) -> Tensor:
    """Randomly crop every image of a batch out of its padded version and flip half of them horizontally.

    Does on a whole batch what ``RandomCrop(size, padding)`` followed by ``RandomHorizontalFlip()`` do per image,
    with one gather. Offsets and flips are drawn on the CPU from ``generator`` (a few numbers per image).

    Args:
        images: Batch, shape [B, C, H, W].
        generator: CPU generator for the offsets and flips.
        padding: Pixels of padding on every side before cropping back to [H, W].
        fill: Value of the padding per channel, shape [C] (the normalised value of a black pixel).
        flip: Also flip each image horizontally with probability 0.5.

    Returns:
        The augmented batch, shape [B, C, H, W].
    """
    batch, channels, height, width = images.shape
    padded = fill.to(images).view(1, channels, 1, 1).expand(batch, channels, height + 2 * padding, width + 2 * padding)
    padded = padded.clone()
    padded[:, :, padding : padding + height, padding : padding + width] = images
    top = torch.randint(0, 2 * padding + 1, (batch, 1), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (batch, 1), generator=generator)
    cols = torch.arange(width).expand(batch, width)
    if flip:
        flipped = torch.rand(batch, 1, generator=generator) < 0.5
        cols = torch.where(flipped, width - 1 - cols, cols)
    rows = (top + torch.arange(height)).to(images.device)
    cols = (left + cols).to(images.device)
    sample = torch.arange(batch, device=images.device).view(batch, 1, 1, 1)
    channel = torch.arange(channels, device=images.device).view(1, channels, 1, 1)
    return padded[sample, channel, rows.view(batch, 1, height, 1), cols.view(batch, 1, 1, width)]
