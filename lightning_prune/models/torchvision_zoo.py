"""ImageNet networks from torchvision (ResNet-18/50, ResNeXt-50 32x4d, ViT-B/16, Swin-T), weights chosen by name."""

from __future__ import annotations

from torch import nn
from torchvision import models as tv_models
from torchvision.models import VisionTransformer, WeightsEnum

from lightning_prune.models.registry import check_int, register_model

_IMAGENET_CLASSES = 1000
_VIT_PATCH_SIZE = 16


def resolve_weights(model_name: str, weights: str | None) -> WeightsEnum | None:
    """Turn a weights name into torchvision's enum member, without downloading anything.

    Args:
        model_name: torchvision's builder name, e.g. ``"resnet18"``.
        weights: ``None``, a member name such as ``"DEFAULT"`` or ``"IMAGENET1K_V1"``, or the qualified form
            ``"ResNet18_Weights.IMAGENET1K_V1"``.

    Returns:
        The weights enum member, or ``None`` for random initialisation.

    Raises:
        ValueError: If ``weights`` names no weights of ``model_name``; the message lists the valid names.
    """
    if weights is None:
        return None
    weights_enum = tv_models.get_model_weights(model_name)
    member_name = weights.removeprefix(f"{weights_enum.__name__}.")
    if member_name not in weights_enum.__members__:
        raise ValueError(
            f"`weights` of {model_name} must be None or one of {list(weights_enum.__members__)}, got {weights!r}."
        )
    return weights_enum[member_name]


def _build(model_name: str, weights: str | None, num_classes: int, **kwargs: object) -> nn.Module:
    """Build ``model_name``; with weights, load them at their own head size and then swap in a fresh head."""
    check_int("num_classes", num_classes, 1)
    resolved = resolve_weights(model_name, weights)
    head_classes = len(resolved.meta["categories"]) if resolved is not None else num_classes
    model = tv_models.get_model(model_name, weights=resolved, num_classes=head_classes, **kwargs)
    if num_classes != head_classes:
        _replace_head(model, num_classes)
    return model


def _replace_head(model: nn.Module, num_classes: int) -> None:
    """Swap the last linear layer for a freshly initialised one with ``num_classes`` outputs."""
    if isinstance(model, VisionTransformer):
        model.heads.head = nn.Linear(model.heads.head.in_features, num_classes)
    elif isinstance(getattr(model, "head", None), nn.Linear):  # Swin
        model.head = nn.Linear(model.head.in_features, num_classes)
    else:
        model.fc = nn.Linear(model.fc.in_features, num_classes)


@register_model("resnet18")
def resnet18(weights: str | None = None, num_classes: int = _IMAGENET_CLASSES) -> nn.Module:
    """torchvision's ResNet-18.

    Args:
        weights: ``None`` (random init), ``"DEFAULT"`` or ``"IMAGENET1K_V1"``.
        num_classes: Outputs of ``fc``; with weights and another count, ``fc`` is replaced after loading.

    Returns:
        The model; it maps ``[batch, 3, h, w]`` (224x224 for ImageNet) to logits ``[batch, num_classes]``.
    """
    model = _build("resnet18", weights, num_classes)
    model.input_shape = (3, 224, 224)
    return model


@register_model("resnet50")
def resnet50(weights: str | None = None, num_classes: int = _IMAGENET_CLASSES) -> nn.Module:
    """torchvision's ResNet-50.

    Args:
        weights: ``None`` (random init), ``"DEFAULT"``, ``"IMAGENET1K_V1"`` or ``"IMAGENET1K_V2"``.
        num_classes: Outputs of ``fc``; with weights and another count, ``fc`` is replaced after loading.

    Returns:
        The model; it maps ``[batch, 3, h, w]`` (224x224 for ImageNet) to logits ``[batch, num_classes]``.
    """
    model = _build("resnet50", weights, num_classes)
    model.input_shape = (3, 224, 224)
    return model


@register_model("resnext50_32x4d")
def resnext50_32x4d(weights: str | None = None, num_classes: int = _IMAGENET_CLASSES) -> nn.Module:
    """torchvision's ResNeXt-50 (32 groups of 4 channels in the first stage's 3x3 convs).

    Args:
        weights: ``None`` (random init), ``"DEFAULT"``, ``"IMAGENET1K_V1"`` or ``"IMAGENET1K_V2"``.
        num_classes: Outputs of ``fc``; with weights and another count, ``fc`` is replaced after loading.

    Returns:
        The model; it maps ``[batch, 3, h, w]`` (224x224 for ImageNet) to logits ``[batch, num_classes]``.
    """
    model = _build("resnext50_32x4d", weights, num_classes)
    model.input_shape = (3, 224, 224)
    return model


@register_model("swin_t")
def swin_t(weights: str | None = None, num_classes: int = _IMAGENET_CLASSES) -> nn.Module:
    """torchvision's Swin-T (window 7, heads 3/6/12/24).

    Args:
        weights: ``None`` (random init), ``"DEFAULT"`` or ``"IMAGENET1K_V1"``.
        num_classes: Outputs of ``head``; with weights and another count, ``head`` is replaced after loading.

    Returns:
        The model; it maps ``[batch, 3, h, w]`` (224x224 for ImageNet) to logits ``[batch, num_classes]``.
    """
    model = _build("swin_t", weights, num_classes)
    model.input_shape = (3, 224, 224)
    return model


@register_model("vit_b_16")
def vit_b_16(
    weights: str | None = None, num_classes: int = _IMAGENET_CLASSES, image_size: int | None = None
) -> nn.Module:
    """torchvision's ViT-B/16.

    Args:
        weights: ``None`` (random init), ``"DEFAULT"``, ``"IMAGENET1K_V1"``, ``"IMAGENET1K_SWAG_E2E_V1"`` or
            ``"IMAGENET1K_SWAG_LINEAR_V1"``.
        num_classes: Outputs of ``heads.head``; with weights and another count, the head is replaced after loading.
        image_size: Side of the square input, a multiple of 16. ``None`` means the size the weights were trained
            at (224, or 384 for SWAG end-to-end) or 224 without weights. Weights fix the position embeddings, so
            with weights it must be that size.

    Returns:
        The model; it maps ``[batch, 3, image_size, image_size]`` to logits ``[batch, num_classes]``.

    Raises:
        ValueError: If ``image_size`` is not a positive multiple of 16 or does not match the weights.
    """
    resolved = resolve_weights("vit_b_16", weights)
    native_size = resolved.meta["min_size"][0] if resolved is not None else 224
    if image_size is None:
        image_size = native_size
    check_int("image_size", image_size, _VIT_PATCH_SIZE)
    if image_size % _VIT_PATCH_SIZE:
        raise ValueError(f"`image_size` must be a multiple of the patch size {_VIT_PATCH_SIZE}, got {image_size}.")
    if resolved is not None and image_size != native_size:
        raise ValueError(f"`image_size` must be {native_size} (or None) with weights {weights!r}, got {image_size}.")
    model = _build("vit_b_16", weights, num_classes, image_size=image_size)
    model.input_shape = (3, image_size, image_size)
    return model
