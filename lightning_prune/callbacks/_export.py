"""The Pruning callback's outputs beside the checkpoint: a physically pruned copy (what mask mode saves) and the
`save_pretrained` folder of a pruned transformers model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_prune.pruning.engine import pruned_copy


def save_pruned_hf(
    trainer: Trainer, network: torch.nn.Module, example: Any, indices: dict[str, list[int]], mode: str,
    pad: bool = False,
) -> None:
    """transformers models: `save_pretrained` the pruned model as `<log dir>/pruned_hf` (see `hf_export`).

    Nothing happens for networks without `save_pretrained`; in mask mode the physically pruned equivalent is saved.
    """
    if not callable(getattr(network, "save_pretrained", None)):
        return
    from lightning_prune.pruning.hf_export import save_pruned_pretrained

    if mode == "mask":  # what the masks mean: the same model with the units removed
        network = pruned_copy(network, example, indices)
    folder = Path(trainer.log_dir or trainer.default_root_dir) / "pruned_hf"
    reason = save_pruned_pretrained(network, folder)
    if reason is not None and pad and "sizes differ per layer" in reason:
        from lightning_prune.pruning.hf_padding import zero_padded_copy

        rank_zero_info(f"Pruning: {reason}; writing {folder.name}/ zero-padded to the largest layer (same logits, "
                       "no memory saved: the checkpoint holds the pruned model).")
        reason = save_pruned_pretrained(zero_padded_copy(network), folder)
    tokenizer = getattr(getattr(trainer, "datamodule", None), "tokenizer", None)
    if reason is None and callable(getattr(tokenizer, "save_pretrained", None)):
        tokenizer.save_pretrained(str(folder))  # so that tools loading only the folder (lm_eval --model hf) find it
    if reason is None:
        rank_zero_info(f"Pruning: saved the pruned model for `from_pretrained` to {folder}.")
    else:
        rank_zero_warn(f"Pruning: no {folder.name}/ written: {reason}. Reload the pruned model from the "
                       "Lightning checkpoint instead (its pruning record replays the pruning).")
