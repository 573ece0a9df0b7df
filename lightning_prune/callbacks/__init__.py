"""Lightning callbacks: thin wiring over `lightning_prune.pruning` and `lightning_prune.dycoke`.

Imported lazily so that `import lightning_prune.callbacks` does not pull in transformers unless DyCoke is used.
"""

from lightning_prune._lazy import lazy_getattr

_LAZY = {
    "Pruning": "lightning_prune.callbacks.pruning",
    "CorrelationCallback": "lightning_prune.callbacks.correlation",
    "DyCoke": "lightning_prune.callbacks.dycoke",
}

__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
