"""Lightning callbacks: thin wiring over `lightning_prune.pruning`, `lightning_prune.dycoke` and
`lightning_prune.compression`.

Imported lazily so that `import lightning_prune.callbacks` does not pull in transformers unless a token-compression
callback is used.
"""

from lightning_prune._lazy import lazy_getattr

_LAZY = {
    "Pruning": "lightning_prune.callbacks.pruning",
    "CorrelationCallback": "lightning_prune.callbacks.correlation",
    "DyCoke": "lightning_prune.callbacks.dycoke",
    "CompressionCallback": "lightning_prune.callbacks.compression",
    "FastV": "lightning_prune.callbacks.compression",
    "RandomTokens": "lightning_prune.callbacks.compression",
    "UniformSpatial": "lightning_prune.callbacks.compression",
    "UniformTemporal": "lightning_prune.callbacks.compression",
    "VisionZip": "lightning_prune.callbacks.compression",
    "FrameFusion": "lightning_prune.callbacks.merging",
    "PruneVid": "lightning_prune.callbacks.merging",
}

__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
