"""Argument checks shared by the models and the DataModules (a leaf: imports nothing of the package)."""

from __future__ import annotations


def is_int(value: object, minimum: int | None = None) -> bool:
    """Whether ``value`` is an ``int`` (a ``bool`` is not one), of at least ``minimum`` when given.

    For checks that collect several problems or word their own message; :func:`check_int` raises at once.
    """
    return isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum)


def check_int(arg: str, value: object, minimum: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an ``int`` (not a ``bool``) of at least ``minimum``."""
    if not is_int(value, minimum):
        raise ValueError(f"`{arg}` must be an integer >= {minimum}, got {value!r}.")
