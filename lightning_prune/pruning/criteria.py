"""The registry of pruning criteria: name -> class. A criterion is one module (its scores and its `Criterion`
class, whose constructor keywords are its options) plus its line here; the `Pruning` callback, the prune plan and
the study find it by name (`criterion: {name, options}` in a plan, `criterion` + `criterion_options` in a config).
"""

from __future__ import annotations

import inspect
from typing import Any

from lightning_prune.pruning.bn_scale import BNScaleCriterion
from lightning_prune.pruning.importance import (
    Criterion,
    ExplicitCriterion,
    L1Criterion,
    OracleCriterion,
    RandomCriterion,
    TaylorCriterion,
)

_CRITERIA: dict[str, type[Criterion]] = {
    cls.name: cls
    for cls in (
        L1Criterion,
        TaylorCriterion,
        OracleCriterion,
        RandomCriterion,
        ExplicitCriterion,
        BNScaleCriterion,
    )
}
CRITERIA = tuple(_CRITERIA)


def criterion_class(name: str) -> type[Criterion]:
    """The class registered as `name`.

    Raises:
        ValueError: If `name` is not a known criterion (the message lists them).
    """
    if name not in _CRITERIA:
        raise ValueError(f"`criterion` must be one of {list(CRITERIA)}, got {name!r}.")
    return _CRITERIA[name]


def criterion_options(name: str) -> tuple[str, ...]:
    """The option names criterion `name` takes (its constructor's keywords)."""
    parameters = list(inspect.signature(criterion_class(name).__init__).parameters.values())[1:]
    return tuple(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def option_problems(name: str, options: dict[str, Any]) -> list[str]:
    """Every problem with `options` for criterion `name` (unknown names; values its constructor refuses)."""
    if name not in _CRITERIA:
        return []
    known = criterion_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        return [f"`criterion_options` must be among {list(known)} for criterion {name!r}, got {unknown}."]
    try:
        _CRITERIA[name](**options)
    except (TypeError, ValueError) as error:
        return [str(error)]
    return []


def build_criterion(name: str, **options: object) -> Criterion:
    """The criterion called `name` (one of `CRITERIA`), built with the options its class takes.

    Raises:
        ValueError: If `name` is not a known criterion (the message lists them).
    """
    return criterion_class(name)(**options)
