"""A private name -> builder registry, so configs choose a network by a plain string."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from lightning_prune._checks import check_int, is_int  # noqa: F401  (the model builders import them from here)

ModelBuilder = TypeVar("ModelBuilder", bound=Callable[..., nn.Module])

_MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator that registers a model class or builder function under ``name``.

    Args:
        name: The name configs use, e.g. ``"lenet5_mini"``.

    Returns:
        A decorator that records the builder and returns it unchanged.

    Raises:
        ValueError: If ``name`` is already taken.
    """

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _MODEL_BUILDERS:
            raise ValueError(f"`name` must be a model name not yet registered, got {name!r}.")
        _MODEL_BUILDERS[name] = builder
        return builder

    return decorator


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`, sorted."""
    return sorted(_MODEL_BUILDERS)


def build_model(name: str, **kwargs: object) -> nn.Module:
    """Build the registered model ``name`` with keyword arguments ``kwargs``.

    Args:
        name: A name from :func:`available_models`.
        **kwargs: Arguments of that model's builder (e.g. ``num_classes``).

    Returns:
        The freshly initialised model.

    Raises:
        ValueError: If ``name`` is not registered.
        TypeError: If ``kwargs`` holds an argument the builder does not take.
    """
    if name not in _MODEL_BUILDERS:
        raise ValueError(f"`model` must be one of {available_models()}, got {name!r}.")
    builder = _MODEL_BUILDERS[name]
    valid = _keyword_arguments(builder)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown and not _takes_var_keyword(builder):
        raise TypeError(f"arguments of model {name!r} must be among {valid}, got unexpected {unknown}.")
    return builder(**kwargs)


def _keyword_arguments(builder: Callable[..., nn.Module]) -> list[str]:
    """Names of the keyword arguments ``builder`` accepts."""
    parameters = inspect.signature(builder).parameters.values()
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _takes_var_keyword(builder: Callable[..., nn.Module]) -> bool:
    """Whether ``builder`` has a ``**kwargs`` catch-all, in which case it checks its own arguments."""
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(builder).parameters.values())
