"""ImageNet (or any dataset in the same layout) read by torchvision's ``ImageFolder``."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from lightning_prune._checks import check_int
from lightning_prune.data._common import sample_loader

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class _ImageFolderWithClasses(ImageFolder):
    """``ImageFolder`` whose class indices come from a given class list (the training split's), so a validation
    folder missing some classes still gets the same label for every class."""

    def __init__(self, root: Path, classes: list[str], transform: v2.Transform) -> None:
        self._given_classes = classes
        super().__init__(root, transform=transform, allow_empty=True)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return self._given_classes, {name: index for index, name in enumerate(self._given_classes)}


class ImageNetDataModule(LightningDataModule):
    """ImageNet in ``ImageFolder`` layout: ``<root>/train/<class>/*.JPEG`` and ``<root>/val/<class>/*``.

    Training: ``RandomResizedCrop(224)`` and a random horizontal flip; evaluation: ``Resize(256)`` and
    ``CenterCrop(224)``; both normalised with the ImageNet statistics. Batches are
    ``(images [B, 3, 224, 224] float32, labels [B] int64)``. The class indices follow the sorted folder names of
    ``train/`` (the order torchvision's pretrained weights use for ImageNet-1k). Validation, test and predict
    loaders serve ``val/``.

    Args:
        root: The folder holding ``train/`` and ``val/``.
        download: Must stay false: ImageNet cannot be downloaded automatically.
        batch_size: Training batch size.
        eval_batch_size: Batch size of the evaluation loaders.
        num_workers: Worker processes decoding images.
        crop_size: Side of the square images fed to the model.
        resize_size: Shorter side the evaluation images are resized to before the centre crop.
        seed: Seed of the shuffling.
    """

    def __init__(
        self,
        root: str = "data/imagenet",
        download: bool = False,
        batch_size: int = 256,
        eval_batch_size: int = 256,
        num_workers: int = 8,
        crop_size: int = 224,
        resize_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if download:
            raise ValueError(
                "`download` must be false for ImageNet, got True: it cannot be downloaded automatically. Get it from "
                "https://image-net.org and lay it out as <root>/train/<class>/*.JPEG and <root>/val/<class>/*."
            )
        check_int("batch_size", batch_size, 1)
        check_int("eval_batch_size", eval_batch_size, 1)
        check_int("num_workers", num_workers, 0)
        check_int("crop_size", crop_size, 1)
        check_int("resize_size", resize_size, crop_size)
        self.save_hyperparameters()
        self.root = Path(root)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.crop_size = crop_size
        self.resize_size = resize_size
        self.seed = seed
        self._classes: list[str] | None = None

    @property
    def classes(self) -> list[str]:
        """Class folder names of ``train/``, sorted; index = label."""
        if self._classes is None:
            self._classes = self._check_folders()
        return self._classes

    @property
    def num_classes(self) -> int:
        """Number of class folders in ``train/``."""
        return len(self.classes)

    def _check_folders(self) -> list[str]:
        """Check the layout and return the training classes.

        Raises:
            FileNotFoundError: If ``train/`` or ``val/`` is missing or holds no class folder.
            ValueError: If ``val/`` has class folders that ``train/`` lacks.
        """
        splits = {}
        for split in ("train", "val"):
            folder = self.root / split
            splits[split] = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        missing = [str(self.root / split) for split, classes in splits.items() if not classes]
        if missing:
            raise FileNotFoundError(
                f"ImageNet not found: expected class folders {self.root / 'train'}/<class>/*.JPEG and "
                f"{self.root / 'val'}/<class>/* (ImageFolder layout); missing or without class folders: "
                f"{', '.join(missing)}."
            )
        unknown = sorted(set(splits["val"]) - set(splits["train"]))
        if unknown:
            raise ValueError(
                f"Every class folder of `{self.root / 'val'}` must also be in `{self.root / 'train'}`, "
                f"got {len(unknown)} extra: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}."
            )
        return splits["train"]

    def prepare_data(self) -> None:
        self._check_folders()

    def setup(self, stage: str | None = None) -> None:
        self._classes = self._check_folders()

    def _transform(self, augment: bool) -> v2.Compose:
        if augment:
            geometry = [v2.RandomResizedCrop(self.crop_size, antialias=True), v2.RandomHorizontalFlip()]
        else:
            geometry = [v2.Resize(self.resize_size, antialias=True), v2.CenterCrop(self.crop_size)]
        return v2.Compose(
            [v2.ToImage(), *geometry, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(_MEAN), list(_STD))]
        )

    def _loader(self, split: str, augment: bool) -> DataLoader:
        dataset = _ImageFolderWithClasses(self.root / split, self.classes, self._transform(augment))
        batch_size = self.batch_size if augment else self.eval_batch_size
        return sample_loader(dataset, batch_size, shuffle=augment, num_workers=self.num_workers, seed=self.seed)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", augment=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", augment=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("val", augment=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("val", augment=False)

    def train_eval_dataloader(self) -> DataLoader:
        """The training split with evaluation transforms, in folder order, every image (no shuffle, no drop_last)."""
        return self._loader("train", augment=False)
