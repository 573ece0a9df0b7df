"""LightningModules: `ImageClassifier` (pretrain/prune/retrain) and `VideoLLM` (LLaVA-OneVision inference)."""

from lightning_prune._lazy import lazy_getattr

_LAZY = {
    "CausalLM": "lightning_prune.modules.causal_lm",
    "MultimodalLM": "lightning_prune.modules.multimodal_lm",
    "ImageClassifier": "lightning_prune.modules.classifier",
    "VideoLLM": "lightning_prune.modules.video_llm",
}

__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
