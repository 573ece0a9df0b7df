"""A tiny MNIST in the real IDX format (learnable: each digit is a bright square at its own place) and tiny study
configs over it, so that study tests run real Lightning fits in about a second each."""

from __future__ import annotations

import dataclasses
import shutil
import struct
from pathlib import Path

import numpy as np

from lightning_prune.study.spec import MaskConfig, RecipeConfig, StudyConfig

TRAIN_IMAGES, TEST_IMAGES = 192, 96


def _digits(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images with a bright 7x7 square whose place (jittered by up to 2 pixels) is the label."""
    labels = rng.integers(0, 10, count)
    images = rng.integers(0, 100, (count, 28, 28))
    for image, label in zip(images, labels, strict=True):
        row = max(0, 2 + 7 * (label // 4) + rng.integers(-2, 3))
        col = max(0, 2 + 7 * (label % 4) + rng.integers(-2, 3))
        image[row : row + 7, col : col + 7] += 155
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.uint8)


def write_tiny_mnist(root: Path, seed: int = 0) -> Path:
    """``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` with 192 training and 96 test images."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, count in (("train", TRAIN_IMAGES), ("t10k", TEST_IMAGES)):
        images, labels = _digits(count, rng)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, count, 28, 28) + images.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, count) + labels.tobytes())
    return root


def _sgd(lr: float) -> dict:
    return {"class_path": "torch.optim.SGD", "init_args": {"lr": lr, "momentum": 0.9, "weight_decay": 1.0e-4}}


def tiny_study(root: Path, study_dir: Path, **overrides) -> StudyConfig:
    """A study of LeNet5-Mini conv1 at 0.5 on the tiny MNIST: 3 pretrain epochs, 4 sampled masks + l1, 2 retrain
    epochs, 2 repeats, no W&B (tests that want it turn it on)."""
    fields = {
        "name": "tiny",
        "study_dir": study_dir,
        "data": {
            "class_path": "lightning_prune.data.MNISTDataModule",
            "init_args": {"root": str(root), "batch_size": 16, "eval_batch_size": 256},
        },
        "pretrain": RecipeConfig(epochs=3, optimizer=_sgd(0.05), lr_scheduler=None),
        "masks": MaskConfig(layers={"conv1": 0.5}, sample=4, seed=0, criteria=["l1"], calibration_batches=2),
        "retrain": RecipeConfig(epochs=2, optimizer=_sgd(0.01), lr_scheduler=None),
        "repeats": 2,
        "accelerator": "cpu",
        "batching": "off",
        "wandb": False,
    }
    fields.update(overrides)
    return StudyConfig(**fields)


_PREPARED = ("study.json", "masks.json", "pretrained.ckpt")


def copy_study(config, destination: Path, keep: int | None = 0, **overrides):
    """A copy of the prepared study with only the first ``keep`` trial records (all with None); W&B off unless
    ``overrides`` turn it on."""
    destination.mkdir(parents=True)
    source = Path(config.study_dir)
    for name in _PREPARED:
        shutil.copy2(source / name, destination / name)
    records = sorted((source / "trials").glob("*.json"))
    (destination / "trials").mkdir()
    for path in records if keep is None else records[:keep]:
        shutil.copy2(path, destination / "trials" / path.name)
    return dataclasses.replace(config, **{"study_dir": destination, "wandb": False, **overrides})
