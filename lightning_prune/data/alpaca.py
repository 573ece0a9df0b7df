"""`AlpacaDataModule`: instruction data in Alpaca format (`instruction`, `input`, `output`) for LoRA recovery.

The prompt is the Alpaca template LLM-Pruner's `post_training.py` uses (from alpaca-lora's `templates/alpaca.json`):
with an input, "Below is an instruction that describes a task, paired with an input that provides further context.
Write a response that appropriately completes the request.\\n\\n### Instruction:\\n{instruction}\\n\\n### Input:\\n
{input}\\n\\n### Response:\\n"; without one, the shorter variant; the output follows the prompt. Tokenization as
published: truncated to `cutoff_len` tokens, an EOS appended when there is room, and (unless `train_on_inputs`) the
prompt's tokens carry no loss (`-100`).

Batches are `(input_ids [B, T], labels [B, T])`, padded on the right to the longest example with labels `-100`:
`CausalLM` passes no attention mask, and with right padding no real token attends to a pad, so the loss is that of
the unpadded examples (the published trainer pads on the left with an attention mask instead).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule

from lightning_prune._paths import resolve_path
from lightning_prune.data._common import SplitLoaders, check_at_least
from lightning_prune.data.text import LazyTokenizer, check_tokenizer_folder

IGNORE_INDEX = -100
PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
FIELDS = ("instruction", "input", "output")


def alpaca_prompt(instruction: str, input: str = "", output: str = "") -> str:  # noqa: A002 (the format's name)
    """The Alpaca prompt for a record, followed by `output` (empty: the prompt alone)."""
    template = PROMPT_INPUT if input else PROMPT_NO_INPUT
    return template.format(instruction=instruction, input=input) + output


def read_records(path: str | Path) -> list[dict[str, str]]:
    """Alpaca records from a JSON list (as alpaca-cleaned ships) or a JSONL file.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If a record lacks `instruction` or `output`, or the file holds none.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Alpaca file {str(path)!r} must exist, got no such file.")
    text = path.read_text(encoding="utf-8")
    records = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" \
        else json.loads(text)
    if not isinstance(records, list) or not records:
        raise ValueError(f"Alpaca file {str(path)!r} must hold a non-empty list of records, got none.")
    for number, record in enumerate(records):
        missing = [key for key in ("instruction", "output") if not isinstance(record.get(key), str)]
        if missing:
            raise ValueError(f"Alpaca record {number} of {path.name} must have string fields {missing}, got keys "
                             f"{sorted(record)}.")
    return [{key: str(record.get(key) or "") for key in FIELDS} for record in records]


def _tokens(tokenizer, text: str, cutoff_len: int, add_eos: bool) -> list[int]:
    ids = list(tokenizer(text, truncation=True, max_length=cutoff_len)["input_ids"])
    eos = tokenizer.eos_token_id
    if add_eos and eos is not None and (not ids or ids[-1] != eos) and len(ids) < cutoff_len:
        ids.append(eos)
    return ids


def tokenize_record(record: dict[str, str], tokenizer, cutoff_len: int = 256, train_on_inputs: bool = False,
                    add_eos_token: bool = False) -> tuple[list[int], list[int]]:
    """`(input_ids, labels)` of one record, as `post_training.py` builds them (labels cut to the ids' length)."""
    ids = _tokens(tokenizer, alpaca_prompt(**record), cutoff_len, add_eos=True)
    labels = list(ids)
    if not train_on_inputs:
        prompt = _tokens(tokenizer, alpaca_prompt(record["instruction"], record["input"]), cutoff_len, add_eos_token)
        prompt_len = len(prompt) - (1 if add_eos_token else 0)
        labels = ([IGNORE_INDEX] * prompt_len + labels[prompt_len:])[: len(ids)]
    return ids, labels


def pad_batch(examples: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad `(ids, labels)` pairs to the longest: pads get `pad_id` and label `-100`."""
    length = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    for row, (example_ids, example_labels) in enumerate(examples):
        ids[row, : len(example_ids)] = torch.as_tensor(example_ids)
        labels[row, : len(example_labels)] = torch.as_tensor(example_labels)
    return ids, labels


class AlpacaDataModule(LazyTokenizer, SplitLoaders, LightningDataModule):
    """Alpaca-format instruction tuning data (e.g. yahma/alpaca-cleaned as a local JSON file).

    Paths naming shipped files (`lightning_prune/data/assets/...`, `pkg://...`) resolve from any folder
    (`lightning_prune._paths`).

    Args:
        train_file: JSON list or JSONL of `{instruction, input, output}` records.
        tokenizer: Folder (usually the model folder) or Hub id of the tokenizer.
        val_file: Held-out records; None holds out `val_size` records of `train_file` (a seeded shuffle, as the
            published `train_test_split(test_size=2000, seed=42)`).
        val_size: Records held out when `val_file` is None.
        cutoff_len: Maximum tokens per example (256 in LLM-Pruner).
        train_on_inputs: Also take the loss on the prompt's tokens.
        add_eos_token: Whether the prompt-only tokenization (which sets the loss mask) ends in EOS, as the
            published flag of that name.
        batch_size: Training batch size.
        eval_batch_size: Batch size of the evaluation loaders.
        seed: Seed of the held-out split and the shuffling (epoch `e`'s order is drawn from `(seed, e)`).
    """

    def __init__(
        self,
        train_file: str,
        tokenizer: str,
        val_file: str | None = None,
        val_size: int = 2000,
        cutoff_len: int = 256,
        train_on_inputs: bool = False,
        add_eos_token: bool = False,
        batch_size: int = 4,
        eval_batch_size: int = 8,
        seed: int = 42,
    ) -> None:
        super().__init__()
        check_at_least("cutoff_len", cutoff_len, 2)
        check_at_least("batch_size", batch_size, 1)
        check_at_least("eval_batch_size", eval_batch_size, 1)
        check_at_least("val_size", val_size, 1)
        check_tokenizer_folder(resolve_path(tokenizer))
        self.save_hyperparameters()  # the paths as given (`pkg://` kept), so a saved config stays portable
        self.train_file, self.val_size = resolve_path(train_file), val_size
        self.val_file = None if val_file is None else resolve_path(val_file)
        self.tokenizer_name, self.cutoff_len = resolve_path(tokenizer), cutoff_len
        self.train_on_inputs, self.add_eos_token = train_on_inputs, add_eos_token
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.tokenizer = None
        self._examples: dict[str, list[tuple[list[int], list[int]]]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self._examples:
            return
        for name, path in (("train_file", self.train_file), ("val_file", self.val_file)):
            if path is not None and not Path(path).is_file():  # checked here, so a config parses on another machine
                raise FileNotFoundError(f"`{name}` must be an existing Alpaca JSON/JSONL file, got {path!r}.")
        self._load_tokenizer()
        train = read_records(self.train_file)
        if self.val_file is not None:
            val = read_records(self.val_file)
        else:
            if self.val_size >= len(train):
                raise ValueError(f"`val_size` must be below the {len(train)} records of {self.train_file}, got "
                                 f"{self.val_size}; lower it or give `val_file`.")
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed)).tolist()
            val = [train[i] for i in order[: self.val_size]]
            train = [train[i] for i in order[self.val_size:]]
        options: dict[str, Any] = {"cutoff_len": self.cutoff_len, "train_on_inputs": self.train_on_inputs,
                                   "add_eos_token": self.add_eos_token}
        self._examples = {split: [tokenize_record(r, self.tokenizer, **options) for r in records]
                          for split, records in (("train", train), ("val", val))}

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id or 0)

    def _split_dataset(self, split: str) -> list[tuple[list[int], list[int]]]:
        self.setup()
        return self._examples[split]

    def _collate(self):
        pad_id = self._pad_id()
        return lambda examples: pad_batch(examples, pad_id)
