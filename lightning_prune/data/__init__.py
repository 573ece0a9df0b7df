"""LightningDataModules. None of them knows about models."""

from importlib import import_module

_LAZY = {
    "MNISTDataModule": "lightning_prune.data.mnist",
    "MNISTMiniDataModule": "lightning_prune.data.mnist",
    "CIFARDataModule": "lightning_prune.data.cifar",
    "ImageNetDataModule": "lightning_prune.data.imagenet",
    "VideoQADataModule": "lightning_prune.data.video_qa",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
