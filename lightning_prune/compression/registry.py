"""The registry of token-compression methods: name -> "module:Class", imported on first use."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from lightning_prune.compression.base import CompressionMethod

_METHODS = {
    "dycoke": "lightning_prune.compression.dycoke:DyCokeMethod",
    "fastv": "lightning_prune.compression.fastv:FastVMethod",
    "random": "lightning_prune.compression.floors:RandomTokensMethod",
    "uniform_spatial": "lightning_prune.compression.floors:UniformSpatialMethod",
    "uniform_temporal": "lightning_prune.compression.floors:UniformTemporalMethod",
    "visionzip": "lightning_prune.compression.visionzip:VisionZipMethod",
    "framefusion": "lightning_prune.compression.framefusion:FrameFusionMethod",
    "prunevid": "lightning_prune.compression.prunevid:PruneVidMethod",
}

METHOD_NAMES = tuple(_METHODS)


def method_class(name: str) -> type[CompressionMethod]:
    """The class registered as `name`."""
    if name not in _METHODS:
        raise ValueError(f"`method` must be one of {list(_METHODS)}, got {name!r}.")
    module, _, cls = _METHODS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def get_method(name: str, **settings: Any) -> CompressionMethod:
    """The method `name` with `settings` (its published parameter names); unknown names list the valid ones."""
    cls = method_class(name)
    valid = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(settings) - set(valid))
    if unknown:
        raise ValueError(f"{name}'s settings must be among {valid}, got unknown {', '.join(unknown)}.")
    return cls(**settings)
