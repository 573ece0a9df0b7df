"""LightningModules: `ImageClassifier` (pretrain/prune/retrain) and `VideoLLM` (LLaVA-OneVision inference)."""

from importlib import import_module

_LAZY = {
    "ImageClassifier": "lightning_prune.modules.classifier",
    "VideoLLM": "lightning_prune.modules.video_llm",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
