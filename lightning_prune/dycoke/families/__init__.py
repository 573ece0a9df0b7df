"""Family adapters: what DyCoke needs to know about each video-LLM family, one module per family.

Adding a family is one module with a `FamilyAdapter` subclass plus one line in `_FAMILIES`; the hooks, the merging
(`ttm.py`) and the KV selection (`kv_pruning.py`) do not change.
"""

from __future__ import annotations

import importlib

from torch import nn

from lightning_prune.dycoke.families.base import FamilyAdapter, VideoTokens

# name -> "module:AdapterClass" (imported on first use: each pulls in its transformers model file)
_FAMILIES = {
    "llava_onevision": "lightning_prune.dycoke.families.llava_onevision:LlavaOnevisionAdapter",
    "llava_next_video": "lightning_prune.dycoke.families.llava_next_video:LlavaNextVideoAdapter",
    "qwen2_5_vl": "lightning_prune.dycoke.families.qwen2_5_vl:Qwen2_5_VLAdapter",
    "qwen3_vl": "lightning_prune.dycoke.families.qwen3_vl:Qwen3VLAdapter",
    "internvl": "lightning_prune.dycoke.families.internvl:InternVLAdapter",
}

FAMILY_NAMES = tuple(_FAMILIES)


def get_family(name: str) -> FamilyAdapter:
    """The adapter registered as `name`."""
    if name not in _FAMILIES:
        raise ValueError(f"`family` must be one of {list(_FAMILIES)}, got {name!r}.")
    module, _, cls = _FAMILIES[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


def family_of(model: nn.Module) -> tuple[FamilyAdapter, nn.Module]:
    """The adapter whose base model is inside `model`, and that base model."""
    for name in _FAMILIES:
        adapter = get_family(name)
        base = adapter.find_base(model)
        if base is not None:
            return adapter, base
    raise TypeError(
        f"DyCoke has no family adapter for {type(model).__name__}; supported families: {list(_FAMILIES)} "
        "(a module containing one of their transformers models)."
    )


def family_for_model_type(model_type: str) -> FamilyAdapter:
    """The adapter of a checkpoint's `config.model_type`."""
    for name in _FAMILIES:
        adapter = get_family(name)
        if model_type in adapter.model_types:
            return adapter
    raise ValueError(
        f"DyCoke has no family adapter for model_type {model_type!r}; supported families: {list(_FAMILIES)}."
    )


__all__ = ["FAMILY_NAMES", "FamilyAdapter", "VideoTokens", "family_for_model_type", "family_of", "get_family"]
