"""Argument checks shared by the models and the DataModules (a leaf: imports nothing of the package)."""

from __future__ import annotations


def check_int(arg: str, value: object, minimum: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an ``int`` (not a ``bool``) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{arg}` must be an integer >= {minimum}, got {value!r}.")
