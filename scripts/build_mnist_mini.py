"""Build the embedded MNIST subset shipped as ``lightning_prune/data/assets/mnist_mini.npz``.

Reads the full MNIST IDX files with torchvision's own reader and keeps a class-balanced random subset
(by default 600 training and 100 test images per digit), chosen with a fixed seed so the asset can be rebuilt
bit for bit. Images keep their original order within the subset.

Usage::

    python scripts/build_mnist_mini.py --raw ../shared/data/MNIST/raw --out lightning_prune/data/assets/mnist_mini.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from torchvision.datasets import MNIST


def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``per_class`` indices of every class at random, returned in ascending order.

    Args:
        labels: Class labels, shape [N].
        per_class: How many indices to keep per class.
        rng: The random generator that decides which ones.

    Returns:
        The chosen indices, shape [num_classes * per_class], sorted.
    """
    chosen = []
    for digit in np.unique(labels):
        candidates = np.flatnonzero(labels == digit)
        if len(candidates) < per_class:
            raise ValueError(
                f"`per_class` must be at most {len(candidates)} (the images of class {digit}), got {per_class}."
            )
        chosen.append(rng.choice(candidates, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def build_subset(
    raw: Path, train_per_class: int = 600, test_per_class: int = 100, seed: int = 0
) -> dict[str, np.ndarray]:
    """Read the full MNIST from ``raw`` (torchvision's ``<root>/MNIST/raw`` layout) and draw the subset.

    Returns:
        Arrays ``train_images`` [N, 28, 28] uint8, ``train_labels`` [N] uint8, ``test_images``, ``test_labels``,
        and the source row of every kept image, ``train_indices`` / ``test_indices`` [N] int32.
    """
    raw = Path(raw)
    if raw.name != "raw" or raw.parent.name != "MNIST":
        raise ValueError(f"`--raw` must be a folder `<root>/MNIST/raw` (torchvision's layout), got {str(raw)!r}.")
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        dataset = MNIST(root=raw.parent.parent, train=split == "train", download=False)
        labels = dataset.targets.numpy()
        keep = balanced_indices(labels, per_class, rng)
        arrays[f"{split}_images"] = dataset.data.numpy()[keep].astype(np.uint8)
        arrays[f"{split}_labels"] = labels[keep].astype(np.uint8)
        arrays[f"{split}_indices"] = keep.astype(np.int32)
    return arrays


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, required=True, help="the folder <root>/MNIST/raw with the four IDX files")
    parser.add_argument("--out", type=Path, required=True, help="the .npz file to write")
    parser.add_argument("--train-per-class", type=int, default=600)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    arrays = build_subset(args.raw, args.train_per_class, args.test_per_class, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    sizes = ", ".join(f"{key} {value.shape}" for key, value in arrays.items())
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): {sizes}")


if __name__ == "__main__":
    main()
