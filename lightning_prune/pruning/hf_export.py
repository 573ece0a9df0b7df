"""Save a pruned transformers model so that `from_pretrained` loads it again (`pruned_hf/`).

A transformers config holds one `num_attention_heads`, `num_key_value_heads`, `head_dim` and `intermediate_size`
for all decoder layers, so a pruned model reloads only when every layer kept the same sizes (uniform per-layer
pruning). Then the configs the decoder modules read are updated to the new shapes (the live model's config tells
the truth afterwards) and `save_pretrained` writes weights and config. Where sizes differ per layer (global ranking,
or patterns over some layers only) the reason is returned and nothing is written: the Lightning checkpoint and its
pruning record (`restore_pruning`) are the way to reload such a model.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from lightning_prune.pruning.transformer import head_counts, is_decoder_attention, is_gated_mlp


def decoder_sizes(network: nn.Module) -> dict[str, set[int]]:
    """The distinct per-layer sizes: `{"num_attention_heads": {...}, "num_key_value_heads", "head_dim",
    "intermediate_size"}` over every decoder attention and gated MLP of `network`."""
    sizes: dict[str, set[int]] = {}
    for module in network.modules():
        if is_decoder_attention(module):
            heads, kv_heads = head_counts(module)
            sizes.setdefault("num_attention_heads", set()).add(heads)
            sizes.setdefault("num_key_value_heads", set()).add(kv_heads)
            sizes.setdefault("head_dim", set()).add(module.head_dim)
        elif is_gated_mlp(module):
            sizes.setdefault("intermediate_size", set()).add(module.gate_proj.out_features)
    return sizes


def not_exportable_reason(network: nn.Module) -> str | None:
    """Why `network` cannot be saved as a transformers model with a matching config, or None when it can."""
    if not callable(getattr(network, "save_pretrained", None)) or not hasattr(network, "config"):
        return f"{type(network).__name__} is not a transformers PreTrainedModel"
    differing = {key: sorted(values) for key, values in decoder_sizes(network).items() if len(values) > 1}
    if differing:
        return f"sizes differ per layer ({differing}), which a transformers config cannot express"
    return None


def sync_config(network: nn.Module) -> None:
    """Write the decoder's current (uniform) sizes into the configs its attention and MLP modules read.

    For a LLaVA-style model these are the text config's; for a plain decoder the model's own config.
    """
    sizes = {key: next(iter(values)) for key, values in decoder_sizes(network).items()}
    keys = {"attention": ("num_attention_heads", "num_key_value_heads", "head_dim"), "mlp": ("intermediate_size",)}
    for module in network.modules():
        kind = "attention" if is_decoder_attention(module) else "mlp" if is_gated_mlp(module) else None
        config = getattr(module, "config", None)
        if kind is None or config is None:
            continue
        for key in keys[kind]:
            setattr(config, key, sizes[key])
        if kind == "mlp" and hasattr(module, "intermediate_size"):
            module.intermediate_size = sizes["intermediate_size"]


def save_pruned_pretrained(network: nn.Module, folder: str | Path) -> str | None:
    """`save_pretrained` a pruned model into `folder` with a config matching its shapes.

    Args:
        network: A transformers `PreTrainedModel` (pruned or not).
        folder: Where to write (created).

    Returns:
        None when written; otherwise the reason it cannot be (and nothing is written).
    """
    reason = not_exportable_reason(network)
    if reason is not None:
        return reason
    sync_config(network)
    network.save_pretrained(str(folder))
    return None
