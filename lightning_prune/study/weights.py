"""Reading a network's weights from ``pretrained.ckpt``, a Lightning checkpoint or a plain state dict."""

from __future__ import annotations

from pathlib import Path

import torch


def load_network_state(path: Path) -> dict[str, torch.Tensor]:
    """A network state dict from ``pretrained.ckpt``, a Lightning checkpoint (``model.`` prefix) or a state dict."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else payload
    if state and all(key.startswith("model.") for key in state):
        state = {key.removeprefix("model."): value for key, value in state.items()}
    return state
