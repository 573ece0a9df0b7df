"""Reading a network's weights from ``pretrained.ckpt``, a Lightning checkpoint or a plain state dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lightning_prune._files import read_checkpoint


def load_network_state(path: Path, arg: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A network state dict from ``pretrained.ckpt``, a Lightning checkpoint (``model.`` prefix) or a state dict.

    Raises:
        ValueError: in one line naming ``arg`` and the file, if it is unreadable or would run code when loaded.
    """
    return network_state(read_checkpoint(Path(path), arg))


def network_state(payload: Any) -> dict[str, torch.Tensor]:
    """The network state dict inside a loaded checkpoint payload (see `load_network_state`)."""
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else payload
    if state and all(key.startswith("model.") for key in state):
        state = {key.removeprefix("model."): value for key, value in state.items()}
    return state
