"""Files written whole or not at all (the one atomic-write helper of the package), and checkpoints read safely.

The content goes to a temporary file in the same folder, which then replaces the target with ``os.replace``, so a
reader, or a process killed mid-write, never sees half a file. The temporary file is created with ``open(..., "x")``
(the usual ``0o666 & ~umask`` mode, unlike ``tempfile.mkstemp``'s 0600), so that others on a shared file system can
read the results as they can read any other file the user writes.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch


def write_atomic(path: Path, content: str | bytes | Callable[[BinaryIO], None]) -> None:
    """Write ``content`` to ``path`` atomically.

    Args:
        path: The file to (re)place; its folder is created if needed.
        content: Text (UTF-8), bytes, or a function that writes to the binary file it is given (``torch.save``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "xb") as file:
            if callable(content):
                content(file)
            else:
                file.write(content.encode() if isinstance(content, str) else content)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        # Name the file the caller asked for, not the temporary one: that is the one a user knows.
        raise OSError(error.errno, error.strerror, str(path)) from error
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def read_checkpoint(path: Path, arg: str) -> Any:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain Python values only), on the CPU.

    Args:
        path: The file.
        arg: The argument or config field that named it, for the message.

    Raises:
        ValueError: in one line naming ``arg`` and the file, for a file that would run code when loaded (refused;
            torch's advice to retry with ``weights_only=False`` is not passed on) or that is truncated or not a
            checkpoint at all.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        called = re.search(r"GLOBAL (\S+)", str(error))
        if called:
            raise ValueError(
                f"`{arg}` must hold only tensors and plain Python values, got {path}, whose loading would call "
                f"{called.group(1)}: refused. Use only checkpoints you trust, saved as plain state dicts."
            ) from None
        raise ValueError(_unreadable(path, arg)) from None
    except (RuntimeError, EOFError) as error:
        raise ValueError(_unreadable(path, arg)) from error
    except OSError as error:
        if error.filename is not None:  # the file system's own problem (permissions, ...): said as such upstream
            raise
        raise ValueError(_unreadable(path, arg)) from error  # e.g. EINVAL seeking in a truncated archive


def _unreadable(path: Path, arg: str) -> str:
    return (
        f"`{arg}` must be a complete checkpoint written by torch.save, got {path}, which cannot be read "
        "(truncated, or not a checkpoint). Use another one, e.g. an earlier epoch's."
    )


def jsonl_records(path: Path, text: str, arg: str) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` of each non-empty line of a JSONL file, each checked to be one JSON object.

    Raises:
        ValueError: naming ``arg``, the file and the line, for a line that is not a JSON object, or a file
            without any record (which would otherwise give an empty dataset and a run that does nothing).
    """
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"`{arg}` must hold one JSON object per line, got {path} line {number}: {error.msg} "
                f"(column {error.colno})."
            ) from None
        if not isinstance(record, dict):
            raise ValueError(
                f"`{arg}` must hold one JSON object per line, got {path} line {number}: a {type(record).__name__}."
            )
        records.append((number, record))
    if not records:
        raise ValueError(f"`{arg}` must hold at least one record, got {path}, which has none.")
    return records
