"""MNIST, Fashion-MNIST and KMNIST (read by torchvision), and the embedded MNIST subset shipped in the package.

All are served as the oracle-pruning study feeds LeNet5-Mini: 28x28 images padded by 2 pixels to 32x32 and
normalised with the mean and standard deviation of the variant's training pixels.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import KMNIST, MNIST, FashionMNIST
from torchvision.transforms import v2

from lightning_prune.data._common import check_choice
from lightning_prune.data._files import check_idx_file, check_labels_in_range, download_into_place, require_files
from lightning_prune.data._in_memory import ImageTensorDataset, InMemoryImageDataModule

# torchvision dataset class, mean and std of the training pixels in [0, 1] (28x28, before padding).
_VARIANTS: dict[str, tuple[type[MNIST], float, float]] = {
    "mnist": (MNIST, 0.1307, 0.3081),
    "fashion_mnist": (FashionMNIST, 0.2860, 0.3530),
    "kmnist": (KMNIST, 0.1918, 0.3483),
}
_IDX_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
_MINI_ASSET = "assets/mnist_mini.npz"


class MNISTDataModule(InMemoryImageDataModule):
    """MNIST or one of its drop-in variants, from torchvision's raw layout ``<root>/<MNIST|FashionMNIST|KMNIST>/raw``.

    Batches are ``(images [B, 1, 32, 32] float32, labels [B] int64)``.

    Args:
        root: The folder holding ``MNIST/raw`` (or ``FashionMNIST/raw``, ``KMNIST/raw``).
        variant: Which dataset: "mnist", "fashion_mnist" or "kmnist".
        download: Fetch the dataset into ``root`` if it is missing (staged, moved into place once complete).
        batch_size: Training batch size.
        eval_batch_size: Batch size of the evaluation loaders.
        num_workers: Worker processes when not held in memory.
        in_memory: Hold the dataset as tensors and serve batches by indexing them.
        device: Where the held tensors live ("cpu", "cuda", ...); None keeps them on the CPU.
        seed: Seed of the shuffling.
    """

    pad = 2

    def __init__(
        self,
        root: str = "data",
        variant: Literal["mnist", "fashion_mnist", "kmnist"] = "mnist",
        download: bool = False,
        batch_size: int = 256,
        eval_batch_size: int = 1024,
        num_workers: int = 0,
        in_memory: bool = True,
        device: str | None = None,
        seed: int = 0,
    ) -> None:
        check_choice("variant", variant, tuple(_VARIANTS))
        super().__init__(batch_size, eval_batch_size, num_workers, in_memory, device, seed)
        self.save_hyperparameters()
        self.root = Path(root)
        self.variant = variant
        self.download = download
        self.dataset_class, mean, std = _VARIANTS[variant]
        self.mean, self.std = (mean,), (std,)

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def raw_folder(self) -> Path:
        """Where torchvision reads the IDX files: ``<root>/<DatasetClass>/raw``."""
        return self.root / self.dataset_class.__name__ / "raw"

    def _check_files(self) -> None:
        require_files(self.root, self.raw_folder, _IDX_FILES, self.dataset_class.__name__)
        remedy = f"Copy it again, or delete {self.raw_folder} and set `download: true`."
        for name in _IDX_FILES:
            check_idx_file(self.raw_folder / name, 3 if "images" in name else 1, remedy)
            if "labels" in name:
                check_labels_in_range(self.raw_folder / name, self.num_classes, remedy)

    def _download(self) -> None:
        if all((self.raw_folder / name).is_file() for name in _IDX_FILES):
            return

        def fetch(staging: Path) -> Path:
            # torchvision checks the md5 of every archive before extracting it.
            self.dataset_class(root=staging, train=True, download=True)
            return staging / self.dataset_class.__name__ / "raw"

        try:
            download_into_place(self.raw_folder, fetch)
        except (RuntimeError, OSError) as error:
            raise RuntimeError(
                f"Downloading {self.dataset_class.__name__} into {self.raw_folder} failed; nothing was written there. "
                f"Cause: {error}"
            ) from error

    def _decode(self, train: bool) -> tuple[Tensor, Tensor]:
        dataset = self.dataset_class(root=self.root, train=train, download=False)
        return dataset.data.unsqueeze(1), dataset.targets

    def _image_dataset(self, train: bool, transform: v2.Transform) -> Dataset:
        return self.dataset_class(root=self.root, train=train, transform=transform, download=False)


class MNISTMiniDataModule(InMemoryImageDataModule):
    """A real MNIST subset embedded in the package: 6,000 training and 1,000 test images, balanced over digits.

    Needs no files and no network. Built from the full MNIST by ``scripts/build_mnist_mini.py`` (600 training and
    100 test images per digit drawn with a fixed seed). Same transforms and batches as :class:`MNISTDataModule`.

    Args:
        batch_size: Training batch size.
        eval_batch_size: Batch size of the evaluation loaders.
        in_memory: Hold the dataset as tensors and serve batches by indexing them.
        device: Where the held tensors live ("cpu", "cuda", ...); None keeps them on the CPU.
        seed: Seed of the shuffling.
        num_workers: Worker processes when not held in memory.
    """

    pad = 2
    mean = (_VARIANTS["mnist"][1],)
    std = (_VARIANTS["mnist"][2],)

    def __init__(
        self,
        batch_size: int = 256,
        eval_batch_size: int = 1024,
        in_memory: bool = True,
        device: str | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, in_memory, device, seed)
        self.save_hyperparameters()
        self._arrays: dict[str, np.ndarray] | None = None

    @property
    def num_classes(self) -> int:
        return 10

    def _check_files(self) -> None:
        pass  # shipped inside the package

    def _decode(self, train: bool) -> tuple[Tensor, Tensor]:
        if self._arrays is None:
            with resources.files("lightning_prune.data").joinpath(_MINI_ASSET).open("rb") as file, np.load(file) as npz:
                self._arrays = {key: npz[key] for key in npz.files}
        split = "train" if train else "test"
        images = torch.from_numpy(self._arrays[f"{split}_images"]).unsqueeze(1)
        return images, torch.from_numpy(self._arrays[f"{split}_labels"]).long()

    def _image_dataset(self, train: bool, transform: v2.Transform) -> Dataset:
        return ImageTensorDataset(*self._decode(train), transform)
