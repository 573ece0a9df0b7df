"""Fixtures: tiny datasets written in the real on-disk formats torchvision reads (never the real data)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from data_fakes import MNIST_FOLDERS, make_mnist_arrays, write_mnist_raw
from PIL import Image


@pytest.fixture
def mnist_root(tmp_path) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    """A root with ``MNIST/raw``, ``FashionMNIST/raw`` and ``KMNIST/raw``; returns it and each variant's arrays."""
    root = tmp_path / "data"
    written = {}
    for seed, (variant, folder) in enumerate(MNIST_FOLDERS.items()):
        written[variant] = make_mnist_arrays(seed)
        write_mnist_raw(root / folder / "raw", written[variant])
    return root, written


@pytest.fixture
def skip_cifar_md5(monkeypatch):
    """torchvision checks the md5 of every CIFAR file; the tiny fakes only need to exist."""
    import torchvision.datasets.cifar as cifar_module

    monkeypatch.setattr(cifar_module, "check_integrity", lambda path, md5=None: os.path.isfile(path))


@pytest.fixture
def imagenet_root(tmp_path) -> Path:
    """``train/{ant,bee,cat}`` with 3, 2, 2 PNGs of odd sizes, ``val/{ant,cat}`` (no bee) with 1 and 2."""
    root = tmp_path / "imagenet"
    rng = np.random.default_rng(0)
    layout = {"train": {"ant": 3, "bee": 2, "cat": 2}, "val": {"ant": 1, "cat": 2}}
    for split, classes in layout.items():
        for name, count in classes.items():
            (root / split / name).mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 256, (30 + 7 * index, 41, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{name}_{index}.png")
    return root
