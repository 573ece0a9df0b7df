"""Argument checks shared by the models and the DataModules (a leaf: imports nothing of the package)."""

from __future__ import annotations


def is_int(value: object, minimum: int | None = None) -> bool:
    """Whether ``value`` is an ``int`` (a ``bool`` is not one), of at least ``minimum`` when given.

    For checks that collect several problems or word their own message; :func:`check_int` raises at once.
    """
    return isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum)


def int_problems(arg: str, value: object, minimum: int) -> list[str]:
    """``[]`` if ``value`` is an ``int`` (not a ``bool``) of at least ``minimum``, else the one problem, worded as
    :func:`check_int` words it (for checks that collect every problem)."""
    return [] if is_int(value, minimum) else [f"`{arg}` must be an integer >= {minimum}, got {value!r}."]


def check_int(arg: str, value: object, minimum: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an ``int`` (not a ``bool``) of at least ``minimum``."""
    problems = int_problems(arg, value, minimum)
    if problems:
        raise ValueError(problems[0])


def raise_if(problem: str | None) -> None:
    """Raise ``ValueError(problem)`` when a check found one (for checks that return their problem or None)."""
    if problem is not None:
        raise ValueError(problem)
