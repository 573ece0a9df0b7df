"""Perplexity the way the pruning papers compute it, so a number from here stands next to theirs.

Both published conventions join the test split's rows into one string, tokenize it once and cut it into windows:

- `llm_pruner` (horseee/LLM-Pruner, `ppl_dataset.py` / `ppl.py`): rows joined with "\\n\\n", non-overlapping
  windows of 128 tokens (`hf_prune.py`'s evaluation), the tail shorter than a window dropped, and exp of the mean
  next-token NLL over every predicted token (each window predicts its own `seq_len - 1` tokens).
- `wanda` / `sparsegpt` (locuslab/wanda `lib/eval.py`, IST-DASLab/sparsegpt): the same join and windows, but of the
  model's context length (`config.max_position_embeddings`, 2048 for LLaMA, 4096 for Llama-2).

Differences in `seq_len` and joining explain most "I cannot reproduce the perplexity" reports (LLM-Pruner #34,
#60). `windows="sliding"` is the strided evaluation of the transformers guide instead: windows of `seq_len` that
start every `stride` tokens, each scoring only the tokens the previous window did not (with more left context).

The test split comes from local files through HF `datasets` (offline): WikiText-2 raw as published on the Hub
(`wikitext-2-raw-v1/test-*.parquet`, field `text`) or the original `wiki.test.raw`; PTB as `ptb_text_only`
(`.parquet`/`.json(l)`, field `sentence`) or `ptb.test.txt`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune._checks import check_int, is_int

WINDOWS = ("non_overlapping", "sliding")
_TEXT_FIELDS = ("text", "sentence")
_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".txt": "text", ".raw": "text", "": "text"}


@dataclass(frozen=True)
class PerplexityPreset:
    """A published convention. `seq_len` None: the model's context length (`config.max_position_embeddings`)."""

    seq_len: int | None
    join: str = "\n\n"
    windows: Literal["non_overlapping", "sliding"] = "non_overlapping"


PRESETS: dict[str, PerplexityPreset] = {
    "llm_pruner": PerplexityPreset(seq_len=128),
    "wanda": PerplexityPreset(seq_len=None),
    "sparsegpt": PerplexityPreset(seq_len=None),
}


def load_texts(path: str | Path, field: str | None = None) -> list[str]:
    """The rows of a local test split, read through HF `datasets` (no network).

    Args:
        path: A `.parquet`, `.json`/`.jsonl` file (rows with a `text` or `sentence` field), or a text file
            (`wiki.test.raw`, `ptb.test.txt`: one row per line, line breaks kept as the Hub's WikiText rows do).
        field: The column to read; None takes `text`, else `sentence`.

    Raises:
        FileNotFoundError: If `path` is not a file.
        ValueError: If the file format is unknown or the field is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"perplexity file {str(path)!r} must exist, got no such file.")
    builder = _BUILDERS.get(path.suffix)
    if builder is None:
        raise ValueError(f"perplexity file {str(path)!r} must end in one of {sorted(s for s in _BUILDERS if s)} "
                         f"(or have no suffix), got {path.suffix!r}.")
    from datasets import load_dataset

    kwargs = {"keep_linebreaks": True} if builder == "text" else {}
    rows = load_dataset(builder, data_files={"test": str(path)}, split="test", **kwargs)
    if field is None:
        field = next((name for name in _TEXT_FIELDS if name in rows.column_names), None)
    if field not in rows.column_names:
        raise ValueError(f"`field` must be a column of {str(path)!r} ({rows.column_names}), got {field!r}.")
    return [str(text) for text in rows[field]]


def encode(tokenizer, texts: list[str], join: str = "\n\n") -> torch.Tensor:
    """The token ids `[N]` of `join.join(texts)`, tokenized once with the tokenizer's special tokens (a BOS at
    the start for LLaMA), as the published evaluations do."""
    return torch.as_tensor(tokenizer(join.join(texts))["input_ids"], dtype=torch.long)


def window_spans(length: int, seq_len: int, windows: str = "non_overlapping", stride: int | None = None
                 ) -> list[tuple[int, int, int]]:
    """`(start, end, first_scored)` token spans: each window is `ids[start:end]` and its targets from position
    `first_scored` (absolute) on carry the loss.

    Non-overlapping windows score all their `seq_len - 1` next tokens; sliding windows score only the targets
    past the previous window's end (the first window scores all).
    """
    if windows == "non_overlapping":
        return [(i * seq_len, (i + 1) * seq_len, i * seq_len + 1) for i in range(length // seq_len)]
    spans, scored_until = [], 1
    for start in range(0, length - 1, stride):
        end = min(start + seq_len, length)
        spans.append((start, end, max(scored_until, start + 1)))
        scored_until = end
        if end == length:
            break
    return spans


def check_arguments(length: int, seq_len: int, windows: str, stride: int | None) -> None:
    """Raise (before any forward pass) on bad windows, or a text shorter than one window."""
    if windows not in WINDOWS:
        raise ValueError(f"`windows` must be one of {list(WINDOWS)}, got {windows!r}.")
    check_int("seq_len", seq_len, 2)
    if windows == "sliding" and not (is_int(stride) and 1 <= stride <= seq_len):
        raise ValueError(f"`stride` must be an integer in [1, seq_len={seq_len}] for sliding windows, got {stride!r}.")
    if windows == "non_overlapping" and stride is not None:
        raise ValueError(f"`stride` must be None for non-overlapping windows, got {stride!r}.")
    if length < seq_len:
        raise ValueError(f"the perplexity text must hold at least one window of `seq_len` {seq_len} tokens, got "
                         f"{length} tokens; lower `seq_len` or use a longer file.")


def _logits(network: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    outputs = network(ids)
    return outputs.logits if hasattr(outputs, "logits") else outputs


@torch.no_grad()
def perplexity_of_ids(network: nn.Module, ids: torch.Tensor, seq_len: int, windows: str = "non_overlapping",
                      stride: int | None = None, batch_size: int = 4) -> float:
    """exp(mean next-token NLL) of token ids `[N]` over the windows of `window_spans` (eval mode, no grad)."""
    check_arguments(len(ids), seq_len, windows, stride)
    device = next(network.parameters()).device
    was_training = network.training
    network.eval()
    total, count = 0.0, 0
    spans = window_spans(len(ids), seq_len, windows, stride)
    try:
        for first in range(0, len(spans), batch_size):
            chunk = spans[first:first + batch_size]
            lengths = {end - start for start, end, _ in chunk}
            groups = [chunk] if len(lengths) == 1 else [[span] for span in chunk]  # a short last sliding window
            for group in groups:
                batch = torch.stack([ids[start:end] for start, end, _ in group]).to(device)
                logits = _logits(network, batch)[:, :-1].float()
                nll = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")  # [B, T-1]
                for row, (start, _, scored) in enumerate(group):
                    kept = nll[row, scored - start - 1:]
                    total += float(kept.double().sum())
                    count += kept.numel()
    finally:
        network.train(was_training)
    return math.exp(total / count)


def context_length(network: nn.Module) -> int:
    """The model's context length (`config.max_position_embeddings`), the Wanda/SparseGPT window."""
    config = getattr(network, "config", None)
    length = getattr(getattr(config, "get_text_config", lambda: config)(), "max_position_embeddings", None)
    if not isinstance(length, int):
        raise ValueError(f"the Wanda/SparseGPT window is the model's `config.max_position_embeddings`, got a "
                         f"{type(network).__name__} without one; pass `seq_len` instead.")
    return length


def perplexity(network: nn.Module, tokenizer, texts: list[str], seq_len: int | None = None, join: str = "\n\n",
               windows: Literal["non_overlapping", "sliding"] = "non_overlapping", stride: int | None = None,
               preset: str | None = None, batch_size: int = 4) -> float:
    """Perplexity of `texts` joined by `join`, tokenized once and cut into windows.

    Args:
        network: A causal LM: a transformers model (`.logits`) or a network returning logits `[B, T, V]`.
        tokenizer: Its tokenizer (called on one string; special tokens added as by default).
        texts: The rows of the test split (`load_texts`).
        seq_len: Window length in tokens; None with a preset takes the preset's (or the model's context length).
        join: Separator of the rows.
        windows: `non_overlapping` (the papers') or `sliding` (with `stride`).
        stride: Tokens between sliding windows' starts.
        preset: `llm_pruner`, `wanda` or `sparsegpt` (sets `seq_len` when None, `join` and `windows`).
        batch_size: Windows per forward pass.

    Returns:
        exp of the mean next-token NLL over every scored token.

    Raises:
        ValueError: On an unknown preset or window kind, or a text shorter than one window.
    """
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"`preset` must be one of {list(PRESETS)}, got {preset!r}.")
        chosen = PRESETS[preset]
        join, windows = chosen.join, chosen.windows
        seq_len = seq_len or chosen.seq_len or context_length(network)
    if seq_len is None:
        raise ValueError("`seq_len` must be given without a `preset`, got None.")
    return perplexity_of_ids(network, encode(tokenizer, texts, join), seq_len, windows, stride, batch_size)


def file_perplexity(network: nn.Module, tokenizer, path: str | Path, preset: str = "llm_pruner",
                    seq_len: int | None = None, field: str | None = None) -> float:
    """`perplexity` of a local test-split file (`load_texts`) under a named preset."""
    return perplexity(network, tokenizer, load_texts(path, field), seq_len=seq_len, preset=preset)
