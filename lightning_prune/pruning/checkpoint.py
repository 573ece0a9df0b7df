"""The pruning record stored in checkpoints and its replay on a freshly built module.

A checkpoint taken after pruning holds, under `checkpoint["lightning_prune"]["pruning"]`, plain Python types only
(so `--ckpt_path`, which loads with `weights_only=True`, can read it):

    {"version": 1, "target": "model", "mode": "physical" | "mask", "criterion": "l1", "phase": "retrain",
     "indices": {layer: [pruned unit indices]}, "history": Torch-Pruning's pruning_history(),
     "heads": {attention: [pruned heads]}, "example_input": {"shape": [1, 1, 32, 32], "dtype": "float32"}}

In mask mode the masks are a pure function of `indices` and the architecture, so they are recomputed from
`indices` rather than stored; the masked (zero) weights themselves are in the state dict.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_prune.pruning.structure import replay_pruning

RECORD_VERSION = 1


def resolve_target(module: nn.Module, target: str) -> nn.Module:
    """The network to prune: `module.<target>` (dotted), or `module` itself when `target` is `""`.

    Raises:
        ValueError: If the attribute does not exist or is not an `nn.Module`.
    """
    network: Any = module
    for part in target.split(".") if target else []:
        network = getattr(network, part, None)
    if not isinstance(network, nn.Module):
        raise ValueError(
            f"`target` must name an nn.Module attribute of {type(module).__name__} (or be '' for the module "
            f"itself), got {target!r}."
        )
    return network


def example_input(record: dict, device: torch.device | str | None = None) -> torch.Tensor:
    """The zero example input a record was traced with."""
    spec = record["example_input"]
    if spec is None:  # keyword inputs (a multimodal batch) are not stored; decoder replays need none
        return None
    return torch.zeros(spec["shape"], dtype=getattr(torch, spec["dtype"]), device=device)


def read_record(checkpoint: dict) -> dict | None:
    """The pruning record of a checkpoint, or None when it holds none."""
    return checkpoint.get("lightning_prune", {}).get("pruning")


def _already_pruned(network: nn.Module, checkpoint: dict, target: str) -> bool:
    """Whether the network's state already has the checkpoint's shapes (restore was done, or nothing changed)."""
    saved = checkpoint.get("state_dict")
    if saved is None:
        return False
    prefix = f"{target}." if target else ""
    for name, value in network.state_dict().items():
        stored = saved.get(prefix + name)
        if stored is None or tuple(stored.shape) != tuple(value.shape):
            return False
    return True


def restore_pruning(module: nn.Module, checkpoint: dict) -> None:
    """Give a freshly built module the pruned shape recorded in `checkpoint`, before its state dict is loaded.

    Call it from `LightningModule.on_load_checkpoint` so that both `Trainer.fit(ckpt_path=...)` and
    `load_from_checkpoint` work:

        def on_load_checkpoint(self, checkpoint):
            restore_pruning(self, checkpoint)

    It rebuilds the Torch-Pruning dependency graph of the target network on the recorded example input and replays
    the pruning history (and head removals). Nothing happens for checkpoints without a record, for mask mode (the
    shapes do not change) or when the network already has the checkpoint's shapes.

    Args:
        module: The module the checkpoint belongs to (usually the LightningModule).
        checkpoint: The loaded checkpoint dict.
    """
    record = read_record(checkpoint)
    if record is None or record.get("mode") != "physical":
        return
    network = resolve_target(module, record["target"])
    if _already_pruned(network, checkpoint, record["target"]):
        return
    device = next(network.parameters()).device
    replay_pruning(network, record, example_input(record, device))
