"""Plain values checked against their declared type before jsonargparse reads them, so a wrong one is one line.

jsonargparse reports a bad value deep in a class spec as a page about the outermost Union (``--model must be
null``, ``got unknown 'criterion'``). The config walk (`_config_guard`) knows the declared type of every place, so
a value of a simple type (a choice, a number, a flag, a mapping, a list) is checked there, naming the place, the
choices or the type, and the value. Types it does not know (classes, callables, tensors) are left to jsonargparse.
"""

from __future__ import annotations

import collections.abc
import inspect
import typing
from pathlib import Path
from typing import Any, Literal, Union

from lightning_prune._checks import is_int

_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)
_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.Iterable)


def _members(hint: Any) -> list[Any]:
    origin = typing.get_origin(hint)
    if origin is Union or type(hint).__name__ == "UnionType":
        return [member for arg in typing.get_args(hint) for member in _members(arg)]
    if origin is typing.Annotated:
        return _members(typing.get_args(hint)[0])
    return [hint]


def _loaded(value: str) -> Any:
    try:
        return load_yaml(value)
    except Exception:  # noqa: BLE001  (not YAML: stays a string)
        return value


def _kind(member: Any) -> tuple[str, typing.Callable[[Any], bool]] | None:
    """``(what it must be, does a value fit)`` for a simple type; None for a type left to jsonargparse."""
    origin = typing.get_origin(member) or member
    if origin is Literal:
        choices = typing.get_args(member)
        names = {str(choice) for choice in choices}
        return (
            f"one of [{', '.join(str(choice) for choice in choices)}]",
            lambda v: v in choices or (isinstance(v, (str, int)) and not isinstance(v, bool) and str(v) in names),
        )
    if member is type(None):
        return "null", lambda v: v is None
    if member is bool:
        return "true or false", lambda v: isinstance(v, bool) or (isinstance(v, str) and isinstance(_loaded(v), bool))
    if member is int:
        return "an integer", lambda v: is_int(v) or (isinstance(v, str) and is_int(_loaded(v)))
    if member is float:
        return "a number", lambda v: _is_number(v) or (isinstance(v, str) and _is_number(_loaded(v)))
    if member is str:
        return "a string", lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool)
    if member is Path or (inspect.isclass(member) and issubclass(member, Path)):
        return "a path", lambda v: isinstance(v, (str, Path))
    if inspect.isclass(member) and member.__module__ == "torch" and member.__name__ == "Tensor":
        return "a number", _is_number  # a learning rate given as a tensor is only built in code
    if origin in _MAPPINGS:
        return "a mapping", lambda v: isinstance(v, dict)
    if origin in _SEQUENCES and origin is not str:
        return "a list", lambda v: isinstance(v, (list, tuple))
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def value_problem(place: str, value: Any, hint: Any) -> str | None:
    """The one-line problem of ``value`` at ``place`` for the declared type ``hint``, or None (fits, or unsure)."""
    if hint is Any or hint is object:
        return None
    kinds = []
    for member in _members(hint):
        kind = _kind(member)
        if kind is None:
            return None  # a class, a callable, a tensor...: jsonargparse's to judge
        if kind[1](value):
            return None
        kinds.append(kind[0])
    if not kinds:
        return None
    shown = f"{value!r}" if not isinstance(value, (dict, list)) else f"{value!r} (a {type(value).__name__})"
    if isinstance(value, str) and not any(text.startswith("one of") for text in kinds):
        shown = f"{value!r} (a string)"
    return f"`{place}` must be {' or '.join(dict.fromkeys(kinds))}, got {shown}."


def accepted_arguments(cls: type) -> list[str] | None:
    """The constructor arguments of ``cls`` (following ``**kwargs`` to its parents); None when open-ended."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        if klass is object:
            return names
        try:
            parameters = list(inspect.signature(init).parameters.values())[1:]
        except (TypeError, ValueError):
            return None
        names += [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return list(dict.fromkeys(names))
    return None


def unknown_argument_problem(place: str, cls: type, given: typing.Iterable[str]) -> str | None:
    """The problem of ``init_args`` keys ``cls`` does not take, or None."""
    names = accepted_arguments(cls)
    if names is None:
        return None
    unknown = [key for key in given if key not in names]
    if not unknown:
        return None
    return (
        f"`{place}` must hold arguments of {cls.__module__}.{cls.__qualname__} ({', '.join(names)}), "
        f"got unknown {unknown[0]!r}."
    )


def load_yaml(text: str) -> Any:
    """Parse like jsonargparse does (its YAML loader, safe: no Python tags)."""
    try:
        from jsonargparse._loaders_dumpers import yaml_load
    except ImportError:  # pragma: no cover  (another jsonargparse layout: the same safe loader)
        import yaml

        return yaml.safe_load(text)
    return yaml_load(text)
