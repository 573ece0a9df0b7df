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
    named = path if path.suffix == ".safetensors" else path.with_name(f"{path.name}.safetensors")
    return ASSETS / named.name if path.parent == Path(".") else named


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
    from safetensors.torch import save

    from lightning_prune._files import write_atomic

    weights = {key: value.detach().to(torch.float16 if value.is_floating_point() else value.dtype).contiguous()
               .clone() for key, value in model.state_dict().items()}
    metadata = {"format": FORMAT, "family": family, "tiny_config": json.dumps(tiny_config),
                "answer_prefix": answer_prefix, "extra": json.dumps(extra or {})}
    path = Path(path)
    write_atomic(path, save(weights, metadata=metadata))
    return path


# The words of the synthetic questions, options, instruction, answers and chat roles (a word-level tokenizer over
# them keeps a prompt at ~40 tokens instead of ~170 bytes: the tiny models train several times faster).
_CHAT_WORDS = ("user assistant system You are a helpful Answer with the option ' s letter from given choices "
               "directly . , ? : ! ( ) - 0 1 2 3 4 5 6 7 8 9").split()


def _synthetic_words() -> list[str]:
    from lightning_prune.data.synthetic_video import COLOUR_NAMES, COUNT_OPTIONS, QUESTIONS

    text = " ".join([*QUESTIONS.values(), *COLOUR_NAMES, *COUNT_OPTIONS, "left right up down slowly quickly"])
    words = text.replace("?", " ? ").replace(",", " , ").split()
    return sorted({*words, *_CHAT_WORDS, *string.ascii_uppercase})


def word_tokenizer(base):
    """A word-level tokenizer over the synthetic task's words that keeps `base`'s special tokens and their ids.

    Same vocabulary size as `base` (a tiny family's byte-level tokenizer: 256 ids, then the specials), so it replaces
    it without touching the model; any other word becomes `<unk>`.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = base.get_added_vocab()  # {token: id}, ids after the 256 byte symbols
    words = _synthetic_words()
    if len(words) + 1 > min(specials.values()):
        raise ValueError(f"{len(words)} words do not fit below the special tokens' ids ({min(specials.values())}).")
    vocab = {"<unk>": 0, **{word: i + 1 for i, word in enumerate(words)}, **specials}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(sorted(specials, key=specials.get))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token=base.eos_token,
                                   pad_token=base.pad_token,
                                   extra_special_tokens=dict(base.init_kwargs.get("extra_special_tokens") or {}))
