"""Training pieces of `VideoLLM`: answer-token batches and the trained tiny models' weight files (package assets).

A trained file is a safetensors file of the model's half-precision weights whose metadata records how to rebuild
the model around them (`family`, `tiny_config`, `answer_prefix`), so `VideoLLM(checkpoint=...)` needs nothing else.
`scripts/build_tiny_video_models.py` writes the shipped ones to `lightning_prune/data/assets/tiny_video/`.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import torch

from lightning_prune.pruning.lm_loss import IGNORE_INDEX

ASSETS = Path(__file__).resolve().parents[1] / "data" / "assets" / "tiny_video"
BUILD_SCRIPT = "scripts/build_tiny_video_models.py"
FORMAT = "lightning_prune.tiny_video_llm/1"


def answer_text(answer_prefix: str, answer_index: int, end_of_turn: str) -> str:
    """The target the model is trained to generate: `<prefix><letter><end of turn>`."""
    return f"{answer_prefix}{string.ascii_uppercase[answer_index]}{end_of_turn}"


def answer_labels(input_ids: torch.Tensor, answer_length: int) -> torch.Tensor:
    """Labels `[B, S]` that keep the last `answer_length` tokens of every (left-padded) row and ignore the rest."""
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, -answer_length:] = input_ids[:, -answer_length:]
    return labels


def asset_path(checkpoint: str) -> Path:
    """`checkpoint` as given when it is an existing path, else the package asset of that name (`.safetensors` added)."""
    path = Path(checkpoint)
    if path.exists():
        return path
    name = checkpoint if checkpoint.endswith(".safetensors") else f"{checkpoint}.safetensors"
    return ASSETS / name if path.parent == Path(".") else path.with_name(name)


def _rebuild_hint(path: Path) -> str:
    return f"rebuild it with `python {BUILD_SCRIPT} --family {path.stem}` (or point `checkpoint` at another file)"


def read_trained(checkpoint: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights and metadata of a trained file (a path or a shipped asset's name such as `llava_onevision`).

    Raises:
        FileNotFoundError: the file does not exist (names it and the build script).
        ValueError: the file is truncated, not a safetensors file, or not one of ours (names it and the script).
    """
    from safetensors import SafetensorError, safe_open

    path = asset_path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"Trained video model not found: {path}; {_rebuild_hint(path)}.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            weights = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open has no iter)
    except (SafetensorError, OSError, RuntimeError) as error:
        raise ValueError(f"Trained video model {path} cannot be read, it is truncated or damaged ({error}); "
                         f"{_rebuild_hint(path)}.") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(f"Trained video model {path} has format {metadata.get('format')!r}, expected {FORMAT!r}; "
                         f"{_rebuild_hint(path)}.")
    info = {"family": metadata["family"], "tiny_config": json.loads(metadata["tiny_config"]),
            "answer_prefix": metadata.get("answer_prefix", ""), **json.loads(metadata.get("extra", "{}"))}
    return weights, info


def write_trained(path: str | Path, model: torch.nn.Module, family: str, tiny_config: dict[str, Any],
                  answer_prefix: str, extra: dict[str, Any] | None = None) -> Path:
    """Write `model`'s weights in half precision with the metadata `read_trained` rebuilds the model from."""
    from safetensors.torch import save_file

    from lightning_prune._files import write_atomic

    weights = {key: value.detach().to(torch.float16 if value.is_floating_point() else value.dtype).contiguous()
               .clone() for key, value in model.state_dict().items()}
    metadata = {"format": FORMAT, "family": family, "tiny_config": json.dumps(tiny_config),
                "answer_prefix": answer_prefix, "extra": json.dumps(extra or {})}
    path = Path(path)
    staging = path.with_name(f".{path.name}.staging")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(staging), metadata=metadata)
    write_atomic(path, staging.read_bytes())
    staging.unlink()
    return path
