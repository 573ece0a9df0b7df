"""The shared base of the small image datasets (MNIST variants, CIFAR) that can be held in memory as tensors."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from lightning_prune._checks import check_int
from lightning_prune.data._common import parse_device, sample_loader
from lightning_prune.data.tensor_loader import BatchTransform, TensorBatchLoader


class InMemoryImageDataModule(LightningDataModule, ABC):
    """Serves a small image dataset either from tensors held in memory or through a per-image ``DataLoader``.

    In memory (the default), each split is decoded once into uint8 tensors, padded and normalised once into
    float32 tensors (optionally on ``device``) and served by :class:`TensorBatchLoader`; random augmentation is
    applied to whole batches. Otherwise torchvision datasets with per-image transforms feed a ``DataLoader``.

    The validation, test and predict loaders all serve the test split (the study picks the epoch with the best
    test accuracy). :meth:`train_eval_dataloader` serves the training split with test transforms, in file order.

    Subclasses set ``mean``, ``std`` (per channel, of the [0, 1] pixel values), ``pad`` and implement the hooks.

    Args:
        batch_size: Training batch size.
        eval_batch_size: Batch size of the evaluation loaders (validation, test, predict, train-eval).
        num_workers: Worker processes of the per-image ``DataLoader`` (unused in memory).
        in_memory: Hold the data as tensors and serve batches by indexing them.
        device: Where the held tensors live ("cpu", "cuda", ...); None keeps them on the CPU.
        seed: Seed of the shuffling and of the batch augmentation.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int = 0
    download: bool = False

    def __init__(
        self,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int,
        in_memory: bool,
        device: str | None,
        seed: int,
    ) -> None:
        super().__init__()
        check_int("batch_size", batch_size, 1)
        check_int("eval_batch_size", eval_batch_size, 1)
        check_int("num_workers", num_workers, 0)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.in_memory = in_memory
        self.device = parse_device(device)
        self.seed = seed
        self._held: dict[bool, tuple[Tensor, Tensor]] = {}

    # ----------------------------------------------------------------------------------------- subclass hooks
    @property
    @abstractmethod
    def num_classes(self) -> int:
        """Number of classes."""

    @abstractmethod
    def _check_files(self) -> None:
        """Raise ``FileNotFoundError`` naming the folder and files expected if the dataset is not on disk."""

    def _download(self) -> None:
        """Fetch the dataset if it is not complete on disk (called by ``prepare_data`` when asked to)."""

    @abstractmethod
    def _decode(self, train: bool) -> tuple[Tensor, Tensor]:
        """Read one split: uint8 images [N, C, H, W] and integer labels [N]."""

    @abstractmethod
    def _image_dataset(self, train: bool, transform: v2.Transform) -> Dataset:
        """The split as a per-image dataset applying ``transform`` (a PIL image or uint8 [C, H, W] tensor in)."""

    def _train_augmentation(self) -> list[v2.Transform]:
        """Random per-image transforms of the training split, applied before normalisation."""
        return []

    def _batch_augmentation(self) -> BatchTransform | None:
        """The same augmentation applied to a whole normalised batch (in memory)."""
        return None

    # ---------------------------------------------------------------------------------------- Lightning hooks
    def prepare_data(self) -> None:
        if self.download:
            self._download()
        self._check_files()

    def setup(self, stage: str | None = None) -> None:
        self._check_files()
        if self.in_memory:
            # Other stages need no training images; train_eval_dataloader() decodes them on demand.
            if stage in ("fit", None):
                self.train_tensors()
            self.test_tensors()

    def train_dataloader(self) -> TensorBatchLoader | DataLoader:
        if not self.in_memory:
            return self._sample_loader(train=True, augment=True)
        images, labels = self.train_tensors()
        trainer = self.trainer
        # The epoch is not set here: when this runs, a resumed fit's trainer.current_epoch is still the finished
        # epoch. Lightning sets the epoch about to run through the loader's `sampler` at every epoch start.
        return TensorBatchLoader(
            images,
            labels,
            self.batch_size,
            shuffle=True,
            seed=self.seed,
            transform=self._batch_augmentation(),
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
        )

    def val_dataloader(self) -> TensorBatchLoader | DataLoader:
        return self._eval_loader(train=False)

    def test_dataloader(self) -> TensorBatchLoader | DataLoader:
        return self._eval_loader(train=False)

    def predict_dataloader(self) -> TensorBatchLoader | DataLoader:
        return self._eval_loader(train=False)

    def train_eval_dataloader(self) -> TensorBatchLoader | DataLoader:
        """The training split with test transforms, in file order, every image (no shuffle, no drop_last)."""
        return self._eval_loader(train=True)

    # ------------------------------------------------------------------------------------------ held tensors
    def train_tensors(self) -> tuple[Tensor, Tensor]:
        """The training split, padded and normalised: images float32 [N, C, H, W], labels int64 [N].

        Decoded on the first call and kept; on ``device`` when one was given.
        """
        return self._tensors(train=True)

    def test_tensors(self) -> tuple[Tensor, Tensor]:
        """The test split, like :meth:`train_tensors`."""
        return self._tensors(train=False)

    def normalize(self, images: Tensor) -> Tensor:
        """Pad and normalise uint8 images [N, C, H, W] into float32 [N, C, H + 2 pad, W + 2 pad], as the test
        transform does image by image."""
        if self.pad:
            images = F.pad(images, (self.pad,) * 4)
        normalised = images.to(self.device, torch.float32).div_(255)
        mean = torch.tensor(self.mean, device=normalised.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=normalised.device).view(1, -1, 1, 1)
        return normalised.sub_(mean).div_(std)

    def _tensors(self, train: bool) -> tuple[Tensor, Tensor]:
        if train not in self._held:
            self._check_files()
            images, labels = self._decode(train)
            self._held[train] = (self.normalize(images), labels.to(self.device, torch.long))
        return self._held[train]

    # ------------------------------------------------------------------------------------------------ loaders
    def _eval_loader(self, train: bool) -> TensorBatchLoader | DataLoader:
        if self.in_memory:
            return TensorBatchLoader(*self._tensors(train), self.eval_batch_size, shuffle=False)
        return self._sample_loader(train=train, augment=False)

    def _transform(self, augment: bool) -> v2.Compose:
        steps = [v2.ToImage()]
        if self.pad:
            steps.append(v2.Pad(self.pad))
        if augment:
            steps += self._train_augmentation()
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(self.mean), list(self.std))]
        return v2.Compose(steps)

    def _sample_loader(self, train: bool, augment: bool) -> DataLoader:
        self._check_files()
        dataset = self._image_dataset(train, self._transform(augment))
        batch_size = self.batch_size if augment else self.eval_batch_size
        return sample_loader(dataset, batch_size, shuffle=augment, num_workers=self.num_workers, seed=self.seed)


class ImageTensorDataset(Dataset):
    """Per-image access to uint8 image tensors [N, C, H, W] with a transform (the not-in-memory path of arrays)."""

    def __init__(self, images: Tensor, labels: Tensor, transform: v2.Transform) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])
