"""Checks that a dataset is on disk, and downloads that never leave half-written files in place."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


def require_files(root: Path, folder: Path, names: list[str], dataset: str) -> None:
    """Raise one clear error if any of ``names`` is missing from ``folder`` (a folder under the user's ``root``).

    Raises:
        FileNotFoundError: Naming the folder, the files expected and the ones missing.
    """
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{dataset} not found: the folder {folder} must hold {', '.join(names)} (missing: {', '.join(missing)}). "
            f"Set `download: true` to fetch it, or set `root` to the folder that holds {folder.relative_to(root)}."
        )


_IDX_MAGIC = {1: 0x801, 3: 0x803}  # labels (one dimension), images (three)


def check_idx_file(path: Path, dimensions: int, remedy: str) -> None:
    """Raise one clear error naming ``path`` if it is not a complete IDX file (MNIST's format) of ``dimensions``.

    torchvision would otherwise fail deep inside its reader (or read garbage) without naming the file. Only the
    header is read: the size it announces must be the file's size.

    Raises:
        ValueError: For a wrong magic number or a size that does not match the header (truncated or corrupt).
    """
    header_size = 4 + 4 * dimensions
    with open(path, "rb") as file:
        header = file.read(header_size)
    if len(header) < header_size or int.from_bytes(header[:4], "big") != _IDX_MAGIC[dimensions]:
        magic = f"0x{int.from_bytes(header[:4], 'big'):08x}" if len(header) >= 4 else f"{len(header)} bytes"
        raise ValueError(
            f"`{path}` must start with the IDX magic number 0x{_IDX_MAGIC[dimensions]:08x}, got {magic} "
            f"(not an IDX file, or corrupt). {remedy}"
        )
    shape = [int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(dimensions)]
    expected = header_size + math.prod(shape)
    size = path.stat().st_size
    if size != expected:
        raise ValueError(
            f"`{path}` must hold {expected:,} bytes as its header says ({' x '.join(map(str, shape))} values), "
            f"got {size:,} (truncated or corrupt). {remedy}"
        )


def check_labels_in_range(path: Path, num_classes: int, remedy: str) -> None:
    """Raise one clear error naming ``path`` if an IDX label file holds a label outside ``[0, num_classes)``.

    The loss would otherwise fail at the first batch holding it (``Target 200 is out of bounds``), or at none.
    """
    labels = np.frombuffer(path.read_bytes()[8:], dtype=np.uint8)
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        raise ValueError(
            f"`{path}` must hold labels in [0, {num_classes}), got {int(labels[bad[0]])} at record {int(bad[0])} "
            f"({bad.size:,} such records). {remedy}"
        )


def download_into_place(target: Path, fetch: Callable[[Path], Path]) -> None:
    """Download into a temporary folder next to ``target`` and move the result into place only once complete.

    A failure (network, checksum, interruption) leaves ``target`` as it was: never a partial folder that a later
    run would take for a complete dataset. An incomplete ``target`` left by an earlier tool is replaced as a whole.

    Args:
        target: The folder the dataset lives in once complete (e.g. ``<root>/MNIST/raw``).
        fetch: Downloads into the staging root it is given, checks integrity (raising on failure) and returns the
            completed folder inside the staging root that becomes ``target``.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.download-", dir=target.parent))
    try:
        completed = fetch(staging)
        if target.exists():
            # Move the old folder aside first: the rename into place below is then a single atomic step.
            os.replace(target, staging / "previous")
        os.replace(completed, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
