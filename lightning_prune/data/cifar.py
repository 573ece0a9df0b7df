"""CIFAR-10 and CIFAR-100, read by torchvision from its pickled batches."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.transforms import v2

from lightning_prune.data._common import check_choice
from lightning_prune.data._files import download_into_place, require_files
from lightning_prune.data._in_memory import InMemoryImageDataModule
from lightning_prune.data.tensor_loader import BatchTransform, random_crop_flip

# torchvision dataset class, per-channel mean and std of the training pixels in [0, 1].
_VARIANTS: dict[int, tuple[type[CIFAR10], tuple[float, ...], tuple[float, ...]]] = {
    10: (CIFAR10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    100: (CIFAR100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_CROP_PADDING = 4


class CIFARDataModule(InMemoryImageDataModule):
    """CIFAR-10 or CIFAR-100 with the study's recipe, from ``<root>/cifar-10-batches-py`` / ``<root>/cifar-100-python``.

    Training: random 32x32 crop of the image padded by 4 black pixels, random horizontal flip, normalisation.
    Test: normalisation only. Batches are ``(images [B, 3, 32, 32] float32, labels [B] int64)``; CIFAR-100 uses
    the 100 fine labels. In memory, the crop and flip are drawn per image but applied to the whole batch at once.

    Args:
        root: The folder holding the extracted ``cifar-10-batches-py`` / ``cifar-100-python`` folder.
        num_classes: 10 for CIFAR-10, 100 for CIFAR-100.
        download: Fetch the dataset into ``root`` if it is missing (staged, moved into place once complete).
        batch_size: Training batch size.
        eval_batch_size: Batch size of the evaluation loaders.
        num_workers: Worker processes when not held in memory.
        in_memory: Hold the dataset as tensors and serve batches by indexing them.
        device: Where the held tensors live ("cpu", "cuda", ...); None keeps them on the CPU.
        seed: Seed of the shuffling and of the crops and flips.
    """

    def __init__(
        self,
        root: str = "data",
        num_classes: Literal[10, 100] = 10,
        download: bool = False,
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        num_workers: int = 0,
        in_memory: bool = True,
        device: str | None = None,
        seed: int = 0,
    ) -> None:
        check_choice("num_classes", num_classes, tuple(_VARIANTS))
        super().__init__(batch_size, eval_batch_size, num_workers, in_memory, device, seed)
        self.save_hyperparameters()
        self.root = Path(root)
        self.download = download
        self._num_classes = num_classes
        self.dataset_class, self.mean, self.std = _VARIANTS[num_classes]

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def folder(self) -> Path:
        """Where torchvision reads the batches: ``<root>/cifar-10-batches-py`` or ``<root>/cifar-100-python``."""
        return self.root / self.dataset_class.base_folder

    @property
    def _file_names(self) -> list[str]:
        cls = self.dataset_class
        return [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]

    def _check_files(self) -> None:
        require_files(self.root, self.folder, self._file_names, f"CIFAR-{self.num_classes}")

    def _download(self) -> None:
        if all((self.folder / name).is_file() for name in self._file_names):
            return  # torchvision checks every file's md5 when it loads them

        def fetch(staging: Path) -> Path:
            # Downloads the archive (md5 checked), extracts it, then checks the md5 of every extracted batch.
            self.dataset_class(root=staging, train=True, download=True)
            return staging / self.dataset_class.base_folder

        try:
            download_into_place(self.folder, fetch)
        except (RuntimeError, OSError) as error:
            raise RuntimeError(
                f"Downloading CIFAR-{self.num_classes} into {self.folder} failed; nothing was written there. "
                f"Cause: {error}"
            ) from error

    def _decode(self, train: bool) -> tuple[Tensor, Tensor]:
        dataset = self.dataset_class(root=self.root, train=train, download=False)
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # HWC -> CHW
        return images, torch.tensor(dataset.targets)

    def _image_dataset(self, train: bool, transform: v2.Transform) -> Dataset:
        return self.dataset_class(root=self.root, train=train, transform=transform, download=False)

    def _train_augmentation(self) -> list[v2.Transform]:
        return [v2.RandomCrop(32, padding=_CROP_PADDING), v2.RandomHorizontalFlip()]

    def _batch_augmentation(self) -> BatchTransform:
        # Padding is black in pixel space, i.e. -mean/std once normalised.
        black = -torch.tensor(self.mean) / torch.tensor(self.std)
        return partial(random_crop_flip, padding=_CROP_PADDING, fill=black)
