"""Lightning callbacks: thin wiring over `lightning_prune.pruning` and `lightning_prune.dycoke`.

Imported lazily so that `import lightning_prune.callbacks` does not pull in transformers unless DyCoke is used.
"""

from importlib import import_module

_LAZY = {
    "Pruning": "lightning_prune.callbacks.pruning",
    "CorrelationCallback": "lightning_prune.callbacks.correlation",
    "DyCoke": "lightning_prune.callbacks.dycoke",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
