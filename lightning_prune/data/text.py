"""`TextDataModule`: JSONL or plain-text files as fixed-length token blocks for causal language modelling.

Every document is tokenized, documents are joined with the tokenizer's EOS token, and the stream is cut into
blocks of `block_size` tokens (the incomplete tail is dropped), the usual way LMs are pre-trained and calibrated.
Batches are `(input_ids [B, T] int64, labels [B, T] int64)` with `labels == input_ids` (the model shifts).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import TensorDataset

from lightning_prune._files import jsonl_records
from lightning_prune._paths import resolve_path, resolve_paths
from lightning_prune.data._common import SplitLoaders, check_at_least

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_tokenizer_folder(tokenizer: str) -> None:
    """Raise if `tokenizer` is a local path that holds no tokenizer files (Hub ids are left to transformers)."""
    path = Path(tokenizer)
    looks_local = path.exists() or tokenizer.startswith((".", "/", "~")) or tokenizer.count("/") > 1
    if looks_local and not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"`tokenizer` must be a folder holding a tokenizer ({', '.join(_TOKENIZER_FILES)}; usually the model "
            f"folder), got {tokenizer!r}, which holds none."
        )


def check_cached_when_offline(tokenizer: str) -> None:
    """Raise at once if, offline, a Hub id is not in the cache (transformers would retry for about a minute)."""
    path = Path(tokenizer)
    looks_local = path.exists() or tokenizer.startswith((".", "/", "~")) or tokenizer.count("/") > 1
    if not looks_local and _offline() and not _cached(tokenizer):
        raise FileNotFoundError(
            f"`tokenizer` must be a local folder, or a Hub id already in the Hugging Face cache when offline "
            f"(HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set), got {tokenizer!r}, which is not cached. Download it "
            "once online, or give the folder that holds it."
        )


def _offline() -> bool:
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes") for name in ("HF_HUB_OFFLINE",
                                                                                      "TRANSFORMERS_OFFLINE"))


def _cached(repo_id: str) -> bool:
    """Whether the Hub cache holds a tokenizer file of ``repo_id`` (what an offline load would read)."""
    from huggingface_hub import try_to_load_from_cache

    for name in _TOKENIZER_FILES:
        try:
            found = try_to_load_from_cache(repo_id, name)
        except ValueError:  # not a valid repo id: transformers will say so
            return True
        if isinstance(found, str):
            return True
    return False


def load_tokenizer(tokenizer: str):
    """`AutoTokenizer.from_pretrained(tokenizer)` after checking that a local folder holds one."""
    check_tokenizer_folder(tokenizer)
    check_cached_when_offline(tokenizer)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer)


def read_documents(path: str | Path, text_field: str = "text") -> list[str]:
    """The documents of a `.jsonl` file (field `text_field` of each line) or a text file (each non-empty line).

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If a JSONL line lacks `text_field`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {str(path)!r} must exist, got no such file.")
    text = path.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    if path.suffix != ".jsonl":
        return lines
    documents = []
    for number, record in jsonl_records(path, text, "train_files`/`val_files"):
        if text_field not in record:
            raise ValueError(f"`text_field` {text_field!r} must be a key of every line of {path}, got line {number} "
                             f"with keys {sorted(record)}.")
        documents.append(str(record[text_field]))
    return documents


def token_blocks(documents: list[str], tokenizer, block_size: int) -> torch.Tensor:
    """`[N, block_size]` int64 blocks of the EOS-joined token stream of `documents` (tail dropped)."""
    stream: list[int] = []
    eos = tokenizer.eos_token_id
    for text in documents:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            stream.append(eos)
    count = len(stream) // block_size
    return torch.tensor(stream[: count * block_size], dtype=torch.long).view(count, block_size)


class LazyTokenizer:
    """`tokenizer` loaded from `tokenizer_name` on first use (a config parses without it), and `vocab_size`."""

    tokenizer_name: str
    tokenizer = None

    def _load_tokenizer(self):
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.tokenizer_name)
        return self.tokenizer

    @property
    def vocab_size(self) -> int:
        """Size of the tokenizer's vocabulary (with added tokens); the model's embedding must be at least this."""
        return len(self._load_tokenizer())


class TextDataModule(LazyTokenizer, SplitLoaders, LightningDataModule):
    """Causal-LM token blocks from JSONL / plain-text files.

    Validation and test serve `val_files` (the study's held-out split); `train_eval_dataloader()` serves the
    training blocks in order, unshuffled (what `pruned/train_loss` is measured on).

    Paths naming shipped files (`lightning_prune/data/assets/...`, `pkg://...`) resolve from any folder
    (`lightning_prune._paths`).

    Args:
        train_files: Training files (`.jsonl` with a text field, anything else one document per line).
        val_files: Held-out files; None holds out the last `val_fraction` of the training blocks.
        tokenizer: Folder (usually the model folder) or Hub id of the tokenizer.
        block_size: Tokens per block `T`.
        batch_size: Training batch size.
        eval_batch_size: Batch size of the evaluation loaders.
        text_field: JSONL key holding the text.
        val_fraction: Share of training blocks held out when `val_files` is None.
        seed: Seed of the shuffling (the order of epoch `e` is drawn from `(seed, e)`).
    """

    def __init__(
        self,
        train_files: list[str],
        tokenizer: str,
        val_files: list[str] | None = None,
        block_size: int = 128,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        text_field: str = "text",
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_at_least("block_size", block_size, 2)
        check_at_least("batch_size", batch_size, 1)
        check_at_least("eval_batch_size", eval_batch_size, 1)
        if not train_files:
            raise ValueError("`train_files` must list at least one file, got none.")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"`val_fraction` must be in (0, 1), got {val_fraction!r}.")
        check_tokenizer_folder(resolve_path(tokenizer))
        self.save_hyperparameters()  # the paths as given (`pkg://` kept), so a saved config stays portable
        self.train_files, self.val_files = resolve_paths(list(train_files)), resolve_paths(val_files or None)
        self.tokenizer_name, self.block_size, self.text_field = resolve_path(tokenizer), block_size, text_field
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_fraction, self.seed = val_fraction, seed
        self.tokenizer = None
        self._blocks: dict[str, torch.Tensor] = {}

    def setup(self, stage: str | None = None) -> None:
        if self._blocks:
            return
        self._load_tokenizer()

        def blocks(files: list[str]) -> torch.Tensor:
            documents = [doc for file in files for doc in read_documents(file, self.text_field)]
            return token_blocks(documents, self.tokenizer, self.block_size)

        train = blocks(self.train_files)
        if self.val_files:
            val = blocks(self.val_files)
        else:
            held = max(1, round(len(train) * self.val_fraction))
            train, val = train[:-held], train[-held:]
        for split, data in (("train", train), ("val", val)):
            if len(data) == 0:
                raise ValueError(f"the {split} files must hold at least one block of `block_size` "
                                 f"{self.block_size} tokens, got none.")
        self._blocks = {"train": train, "val": val}

    def _split_dataset(self, split: str) -> TensorDataset:
        self.setup()
        data = self._blocks[split]
        return TensorDataset(data, data)
