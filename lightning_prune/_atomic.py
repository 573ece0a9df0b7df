"""Files that appear whole or not at all: the one atomic-write helper of the package.

The content goes to a temporary file in the same folder, which then replaces the target with ``os.replace``, so a
reader, or a process killed mid-write, never sees half a file. The temporary file is created with ``open(..., "x")``
(the usual ``0o666 & ~umask`` mode, unlike ``tempfile.mkstemp``'s 0600), so that others on a shared file system can
read the results as they can read any other file the user writes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


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
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
