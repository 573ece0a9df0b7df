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


class UnsafeOrUnreadable(ValueError):
    """Why `load_weights_only` could not load a file; each caller words it for its own argument.

    Attributes:
        refused: Whether torch's safe unpickler refused the file (else it could not be read at all).
        calls: The global a load would have called (``os.system``, a user class): code, refused. None otherwise.
        pickled: Whether the refused file is a plain pickle (not a torch.save archive).
        reason: Torch's own words, shortened (for a refused pickle, or an unreadable file).
        os_error: The file system's own error (permissions, ...), when that is what failed.
    """

    def __init__(self, refused: bool, reason: str, calls: str | None = None, pickled: bool = False,
                 os_error: OSError | None = None) -> None:
        super().__init__(reason)
        self.refused, self.reason, self.calls, self.pickled, self.os_error = refused, reason, calls, pickled, os_error


def load_weights_only(path: Path, map_location: Any = "cpu") -> Any:
    """``torch.load(..., weights_only=True)``: tensors and plain Python values only, the one safe loader.

    Raises:
        UnsafeOrUnreadable: for a file that would run code when loaded (torch's advice to retry with
            ``weights_only=False`` is never passed on), a pickle safe loading refuses, or a file that cannot be read.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        called = re.search(r"GLOBAL (\S+)", str(error))
        with open(path, "rb") as file:
            pickled = file.read(1) == b"\x80"  # the PROTO opcode a pickle starts with
        reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(error))
        words = reason.group(1).strip() if reason else "not a torch checkpoint"
        raise UnsafeOrUnreadable(True, words, called.group(1) if called else None, pickled) from None
    except (RuntimeError, EOFError) as error:
        raise UnsafeOrUnreadable(False, str(error)) from error
    except OSError as error:  # e.g. EINVAL seeking in a truncated archive, or the file system's own problem
        raise UnsafeOrUnreadable(False, str(error), os_error=error) from error


def read_checkpoint(path: Path, arg: str) -> Any:
    """Load a checkpoint with `load_weights_only` (tensors and plain Python values only), on the CPU.

    Args:
        path: The file.
        arg: The argument or config field that named it, for the message.

    Raises:
        ValueError: in one line naming ``arg`` and the file, for a file that would run code when loaded (refused;
            torch's advice to retry with ``weights_only=False`` is not passed on) or that is truncated or not a
            checkpoint at all.
    """
    try:
        return load_weights_only(path)
    except UnsafeOrUnreadable as error:
        if error.calls is not None:
            raise ValueError(
                f"`{arg}` must hold only tensors and plain Python values, got {path}, whose loading would call "
                f"{error.calls}: refused. Use only checkpoints you trust, saved as plain state dicts."
            ) from None
        if error.os_error is not None and error.os_error.filename is not None:
            raise error.os_error from None  # the file system's own problem (permissions, ...): said as such upstream
        raise ValueError(_unreadable(path, arg)) from error


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
