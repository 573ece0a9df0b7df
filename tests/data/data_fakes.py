"""Writers of tiny datasets in the real on-disk formats torchvision reads (never the real data)."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

MNIST_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}
MNIST_SIZES = {"train": 23, "t10k": 9}


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """IDX image file: big-endian magic 0x803, count, rows, cols, then uint8 pixels."""
    path.write_bytes(struct.pack(">IIII", 0x803, *images.shape) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    """IDX label file: big-endian magic 0x801, count, then uint8 labels."""
    path.write_bytes(struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes())


def make_mnist_arrays(seed: int) -> dict[str, np.ndarray]:
    """Random 28x28 uint8 images and labels for the train and t10k splits."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, size in MNIST_SIZES.items():
        arrays[f"{split}-images-idx3-ubyte"] = rng.integers(0, 256, (size, 28, 28), dtype=np.uint8)
        arrays[f"{split}-labels-idx1-ubyte"] = rng.integers(0, 10, size, dtype=np.uint8)
    return arrays


def write_mnist_raw(raw: Path, arrays: dict[str, np.ndarray]) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        (write_idx_images if "images" in name else write_idx_labels)(raw / name, array)


def make_cifar_files(num_classes: int, seed: int = 0) -> dict[str, dict]:
    """The pickled dicts of a tiny CIFAR-10 or CIFAR-100, by file name (data rows are CHW-flattened uint8)."""
    rng = np.random.default_rng(seed)

    def batch(size: int) -> dict:
        entry = {"data": rng.integers(0, 256, (size, 3 * 32 * 32), dtype=np.uint8)}
        labels = rng.integers(0, num_classes, size).tolist()
        if num_classes == 10:
            entry["labels"] = labels
        else:
            entry["fine_labels"], entry["coarse_labels"] = labels, [label // 5 for label in labels]
        return entry

    if num_classes == 10:
        files = {f"data_batch_{i}": batch(4) for i in range(1, 6)}
        files["test_batch"] = batch(7)
        files["batches.meta"] = {"label_names": [f"class{i}" for i in range(10)]}
    else:
        files = {"train": batch(19), "test": batch(7)}
        files["meta"] = {"fine_label_names": [f"fine{i}" for i in range(100)]}
    return files


def write_cifar(folder: Path, files: dict[str, dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, entry in files.items():
        (folder / name).write_bytes(pickle.dumps(entry))
