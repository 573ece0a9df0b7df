"""LightningDataModules. None of them knows about models."""

from lightning_prune._lazy import lazy_getattr

_LAZY = {
    "MNISTDataModule": "lightning_prune.data.mnist",
    "MNISTMiniDataModule": "lightning_prune.data.mnist",
    "CIFARDataModule": "lightning_prune.data.cifar",
    "ImageNetDataModule": "lightning_prune.data.imagenet",
    "VideoQADataModule": "lightning_prune.data.video_qa",
    "SyntheticVideoQADataModule": "lightning_prune.data.synthetic_video_qa",
    "TextDataModule": "lightning_prune.data.text",
    "LlavaInstructDataModule": "lightning_prune.data.llava_instruct",
    "AlpacaDataModule": "lightning_prune.data.alpaca",
}

__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
