"""Paths in configs that name the package's shipped files, resolved the same from any working directory.

The shipped configs name their assets relative to a clone's root (`lightning_prune/data/assets/tiny_text`). A
relative path that does not exist from the working directory and starts with `lightning_prune/` is taken inside the
imported package instead (a clone or an installed wheel, which ships the assets as package data), so those configs
run from any folder. `pkg://<package>/<path>` names a file inside any importable package explicitly. Every other
path is returned unchanged: a relative path that exists from the working directory wins, as before.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE_SCHEME = "pkg://"
_PACKAGE = Path(__file__).resolve().parent  # the imported lightning_prune/ folder


def resolve_path(path: str | Path) -> str:
    """`path` with a `pkg://<package>/` or a missing relative `lightning_prune/` prefix taken inside the package.

    Raises:
        ValueError: If a `pkg://` path names no importable package.
    """
    text = str(path)
    if text.startswith(PACKAGE_SCHEME):
        package, _, inner = text[len(PACKAGE_SCHEME):].partition("/")
        spec = importlib.util.find_spec(package) if package and "." not in package else None
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"a `{PACKAGE_SCHEME}` path must be {PACKAGE_SCHEME}<package>/<path inside it> naming an "
                             f"importable package, got {text!r}.")
        return str(Path(next(iter(spec.submodule_search_locations)), inner))
    relative = Path(text)
    if relative.is_absolute() or relative.exists() or relative.parts[:1] != (_PACKAGE.name,):
        return text
    inside = _PACKAGE.parent / relative
    return str(inside) if inside.exists() else text


def resolve_paths(paths: list[str] | None) -> list[str] | None:
    """:func:`resolve_path` of each path (None stays None)."""
    return None if paths is None else [resolve_path(path) for path in paths]
