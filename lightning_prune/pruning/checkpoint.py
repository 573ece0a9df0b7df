"""The pruning record stored in checkpoints and its replay on a freshly built module.

A checkpoint taken after pruning holds, under `checkpoint["lightning_prune"]["pruning"]`, plain Python types only
(so `--ckpt_path`, which loads with `weights_only=True`, can read it):

    {"version": 2, "target": "model", "mode": "physical" | "mask", "criterion": "l1", "phase": "retrain",
     "indices": {layer: [pruned unit indices]}, "history": Torch-Pruning's pruning_history(),
     "heads": {attention: [pruned heads]}, "example_input": {"shape": [1, 1, 32, 32], "dtype": "float32"},
     "steps": [{"epoch": 2, "fraction": 0.5, "indices": {layer: [indices pruned at this step]}}, ...]}

Version 2 (iterative schedules) accumulates every step: `indices` and `heads` are cumulative, in the unpruned
network's numbering; `history` is every step's Torch-Pruning history in order (each step's entries number the
network as it was then, so replaying them in order on a fresh network redoes the steps); `steps` lists the steps
done. Version 1 records (one step, no `steps`) read as one step at fraction 1.

In mask mode the masks are a pure function of `indices` and the architecture, so they are recomputed from
`indices` rather than stored; the masked (zero) weights themselves are in the state dict.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from lightning_prune._files import UnsafeOrUnreadable, load_weights_only
from lightning_prune.pruning.build import replay_pruning

RECORD_VERSION = 2
ModuleT = TypeVar("ModuleT", bound=nn.Module)


def resolve_target(module: nn.Module, target: str) -> nn.Module:
    """The network to prune: `module.<target>` (dotted), or `module` itself when `target` is `""`.

    A `torch.compile`d network resolves to the module it wraps (`_orig_mod`, which holds the parameters): that
    is what gets pruned; the compiled wrapper traces it again on its next call, when its guards see new shapes.

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
    return _uncompiled(network)


def _uncompiled(network: nn.Module) -> nn.Module:
    original = getattr(network, "_orig_mod", None)  # torch.compile's OptimizedModule
    return original if isinstance(original, nn.Module) else network


def _state_prefix(module: nn.Module, network: nn.Module) -> str:
    """The state-dict prefix of `network` inside `module` (`"net."`, `"net._orig_mod."` when compiled)."""
    for name, child in module.named_modules():
        if child is network:
            return f"{name}." if name else ""
    return ""


def example_input(record: dict, device: torch.device | str | None = None) -> torch.Tensor:
    """The zero example input a record was traced with."""
    spec = record["example_input"]
    if spec is None:  # keyword inputs (a multimodal batch) are not stored; decoder replays need none
        return None
    return torch.zeros(spec["shape"], dtype=getattr(torch, spec["dtype"]), device=device)


def read_record(checkpoint: dict) -> dict | None:
    """The pruning record of a checkpoint, or None when it holds none (version 1 gains its one `steps` entry)."""
    record = checkpoint.get("lightning_prune", {}).get("pruning")
    if record is not None and "steps" not in record:
        record = {**record, "steps": [{"epoch": None, "fraction": 1.0, "indices": record.get("indices", {})}]}
    return record


def shape_mismatch(module: nn.Module, state_dict: dict) -> tuple[str, list[int], list[int]] | None:
    """The first entry of `module`'s state whose shape differs from `state_dict`'s, as `(name, in memory, saved)`."""
    for name, value in module.state_dict().items():
        stored = state_dict.get(name)
        if stored is not None and tuple(stored.shape) != tuple(value.shape):
            return name, list(value.shape), list(stored.shape)
    return None


def _already_pruned(module: nn.Module, network: nn.Module, checkpoint: dict) -> bool:
    """Whether the network's state already has the checkpoint's shapes (restore was done, or nothing changed)."""
    saved = checkpoint.get("state_dict")
    if saved is None:
        return False
    prefix = _state_prefix(module, network)
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
    if _already_pruned(module, network, checkpoint):
        return
    device = next(network.parameters()).device
    replay_pruning(network, record, example_input(record, device))


def mismatch_message(source: str, record: dict | None, mismatch: tuple[str, list[int], list[int]]) -> str:
    """One line saying which side is pruned when a checkpoint's shapes do not fit the module in memory."""
    name, in_memory, saved = mismatch
    shapes = f"({name}: {saved} in the file, {in_memory} in memory)"
    if record is not None:
        return (
            f"checkpoint {source} was saved after pruning (its record prunes {_record_summary(record)}) and the "
            f"model in memory has other shapes {shapes}; load it into a freshly built, unpruned module."
        )
    if math.prod(saved) < math.prod(in_memory):
        return (
            f"checkpoint {source} holds a pruned network but no pruning record (saved with `save_weights_only`?) "
            f"and the model in memory is unpruned {shapes}; save full checkpoints to restore pruned models."
        )
    return (
        f"checkpoint {source} was saved before pruning (it carries no pruning record) and the model in memory "
        f"is pruned {shapes}; load it into a freshly built, unpruned module, or pick a checkpoint saved after "
        "pruning."
    )


def _record_summary(record: dict) -> str:
    indices = record.get("indices") or {}
    return ", ".join(f"{len(idxs)} of {layer}" for layer, idxs in indices.items()) or "some units"


def load_pruned(
    module_class: type[ModuleT],
    path: str | Path,
    map_location: str | torch.device | None = "cpu",
    strict: bool = True,
    **init_kwargs: Any,
) -> ModuleT:
    """Build `module_class` and load a checkpoint into it, pruned as the checkpoint records: `load_from_checkpoint`
    for pruned checkpoints, with no hook in the module.

    The module is built from the checkpoint's saved hyperparameters updated with `init_kwargs` (only those its
    `__init__` accepts, unless it takes `**kwargs`), given the recorded structure (`restore_pruning`), passed the
    checkpoint through its own `on_load_checkpoint` if it has one, then loaded, and returned in eval mode. The file is
    read with `weights_only=True`: hyperparameters that were nn.Modules are not in checkpoints saved with the
    `Pruning` callback, so pass them again (e.g. `net=MyNet()`).

    Args:
        module_class: The LightningModule (or any nn.Module) class the checkpoint was saved from.
        path: The checkpoint file.
        map_location: Where to load the tensors.
        strict: Whether every key of the module and the checkpoint must match.
        **init_kwargs: Constructor arguments that override or complete the saved hyperparameters.

    Raises:
        ValueError: If the file cannot be read as a checkpoint, holds objects other than plain types, or its shapes
            do not fit the module even after restoring its pruning.
    """
    checkpoint = _read_checkpoint(Path(path), map_location)
    arguments = {**dict(checkpoint.get("hyper_parameters") or {}), **init_kwargs}
    parameters = inspect.signature(module_class.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        arguments = {key: value for key, value in arguments.items() if key in parameters}
    module = module_class(**arguments)
    restore_pruning(module, checkpoint)
    if callable(getattr(module, "on_load_checkpoint", None)):
        module.on_load_checkpoint(checkpoint)
    mismatch = shape_mismatch(module, checkpoint["state_dict"])
    if mismatch is not None:
        raise ValueError(mismatch_message(f"'{path}'", read_record(checkpoint), mismatch))
    module.load_state_dict(checkpoint["state_dict"], strict=strict)
    return module.eval()


def _read_checkpoint(path: Path, map_location: str | torch.device | None) -> dict:
    if not path.is_file():
        raise ValueError(f"`path` must be an existing checkpoint file, got '{path}'.")
    try:
        checkpoint = load_weights_only(path, map_location)
    except UnsafeOrUnreadable as error:
        if error.calls is not None:
            raise ValueError(
                f"checkpoint '{path}' must hold plain types only (it is read with weights_only=True), got a "
                f"{error.calls} object; save the objects among its hyperparameters with "
                "`save_hyperparameters(ignore=[...])`, or train with the `Pruning` callback, which leaves them out."
            ) from None
        if error.pickled:
            raise ValueError(
                f"checkpoint '{path}' must be a torch.save checkpoint of tensors and plain values, got a pickle "
                f"that safe loading refuses ({error.reason}): not loaded. Save the weights again with torch.save, "
                "or use a checkpoint written by Lightning."
            ) from None
        if error.refused:  # by the unpickler, and not a pickle at all
            raise ValueError(f"checkpoint '{path}' must be a readable torch checkpoint, got other bytes.") from None
        raise ValueError(f"checkpoint '{path}' must be a readable torch checkpoint, got: {error.reason}.") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"checkpoint '{path}' must be a Lightning checkpoint with a `state_dict`, got none.")
    return checkpoint
