"""`LlavaInstructDataModule`: LLaVA-format conversation JSON plus an image folder, for fine-tuning and evaluation.

A record is LLaVA's instruction format:

    {"id": "0", "image": "cat.png", "conversations": [{"from": "human", "value": "<image>\\nWhat animal is it?"},
                                                      {"from": "gpt", "value": "cat"}], "options": ["cat", "dog"]}

Turns are joined as `USER: <question> ASSISTANT: <answer></s>` (the LLaVA-1.5 template, `template` to change it);
only the answer tokens (and their EOS) carry a loss. The processor (from the model folder) expands `<image>` into
the model's image tokens and makes `pixel_values`. Held-out records with `options` give multiple-choice VQA: one
item per option with the last answer replaced by that option; the option whose answer tokens have the highest
log-likelihood is the prediction. Batches are `(inputs, labels, meta)`: `inputs` a dict of `input_ids`,
`attention_mask` (`[B, T]`) and `pixel_values` (`[B, 3, H, W]`), `labels` `[B, T]` (-100 where no loss), `meta` a
dict of `[B]` int64 tensors `question` (record index), `option` (-1 without options) and `gold` (1 for the record's
own answer).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import Dataset

from lightning_prune._files import jsonl_records
from lightning_prune._paths import resolve_path
from lightning_prune.data._common import SplitLoaders, check_at_least
from lightning_prune.data.text import check_tokenizer_folder

IGNORE_INDEX = -100
_TEMPLATE = "USER: {question} ASSISTANT:"


def read_conversations(path: str | Path, image_folder: str | Path) -> list[dict]:
    """Records of a LLaVA-format JSON (list) or JSONL file, checked: an image that exists and human/gpt turns.

    Raises:
        FileNotFoundError: If the file or a record's image does not exist.
        ValueError: If a record lacks `image` or `conversations`, turns do not alternate human/gpt, or `options`
            does not hold the record's answer.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"conversation file {str(path)!r} must exist, got no such file.")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"conversation file {path} must be valid JSON, got line {error.lineno}: {error.msg}."
            ) from None
    else:
        records = [record for _, record in jsonl_records(path, text, "train_file`/`val_file")]
    for number, record in enumerate(records):
        where = f"record {number} of {path.name}"
        if "image" not in record or "conversations" not in record:
            raise ValueError(f"{where} must have `image` and `conversations`, got keys {sorted(record)}.")
        if not (Path(image_folder) / record["image"]).is_file():
            raise FileNotFoundError(f"{where}: image {record['image']!r} must exist in `image_folder` "
                                    f"{str(image_folder)!r}, got no such file.")
        roles = [turn["from"] for turn in record["conversations"]]
        if not roles or roles != ["human", "gpt"] * (len(roles) // 2):
            raise ValueError(f"{where} must alternate 'human' and 'gpt' turns, got {roles}.")
        options = record.get("options")
        if options is not None and record["conversations"][-1]["value"] not in options:
            raise ValueError(f"{where}: `options` must hold the answer {record['conversations'][-1]['value']!r}, "
                             f"got {options}.")
    return records


class ConversationDataset(Dataset):
    """One item per record (training) or per (record, option) (multiple-choice evaluation)."""

    def __init__(self, records: list[dict], image_folder: Path, processor, template: str, choices: bool) -> None:
        self.records, self.image_folder, self.processor, self.template = records, image_folder, processor, template
        self.items: list[tuple[int, int]] = []
        for index, record in enumerate(records):
            options = record.get("options") if choices else None
            self.items.extend([(index, k) for k in range(len(options))] if options else [(index, -1)])

    def __len__(self) -> int:
        return len(self.items)

    def _turns(self, record: dict, option: int) -> list[tuple[str, str]]:
        turns = record["conversations"]
        pairs = [(turns[i]["value"], turns[i + 1]["value"]) for i in range(0, len(turns), 2)]
        if "<image>" not in pairs[0][0]:
            pairs[0] = ("<image>\n" + pairs[0][0], pairs[0][1])
        if option >= 0:
            pairs[-1] = (pairs[-1][0], record["options"][option])
        return pairs

    def __getitem__(self, index: int) -> dict:
        from PIL import Image

        record_index, option = self.items[index]
        record = self.records[record_index]
        image = Image.open(self.image_folder / record["image"]).convert("RGB")
        eos = self.processor.tokenizer.eos_token or ""
        text, spans = "", []
        for question, answer in self._turns(record, option):
            text += self.template.format(question=question)
            start = len(text)
            text += f" {answer}{eos} "
            spans.append((start, len(text) - 1))
        def ids_of(part: str):
            return self.processor(images=[image], text=[part], return_tensors="pt")

        full = ids_of(text.rstrip())
        labels = torch.full_like(full["input_ids"][0], IGNORE_INDEX)
        for start, end in spans:  # answer tokens = tokens of text[:end] beyond those of text[:start]
            first = ids_of(text[:start])["input_ids"].shape[1]
            last = ids_of(text[:end])["input_ids"].shape[1]
            labels[first:last] = full["input_ids"][0, first:last]
        gold = int(option < 0 or record["options"][option] == record["conversations"][-1]["value"])
        return {"input_ids": full["input_ids"][0], "pixel_values": full["pixel_values"][0], "labels": labels,
                "question": record_index, "option": option, "gold": gold}


def collate_conversations(items: list[dict], pad_id: int) -> tuple[dict, torch.Tensor, dict]:
    """Right-pad a list of items into `(inputs, labels, meta)` (see the module docstring)."""
    length = max(len(item["input_ids"]) for item in items)
    ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        ids[row, :n], labels[row, :n], mask[row, :n] = item["input_ids"], item["labels"], 1
    inputs = {"input_ids": ids, "attention_mask": mask,
              "pixel_values": torch.stack([item["pixel_values"] for item in items])}
    meta = {key: torch.tensor([item[key] for item in items]) for key in ("question", "option", "gold")}
    return inputs, labels, meta


class LlavaInstructDataModule(SplitLoaders, LightningDataModule):
    """LLaVA instruction data: fine-tuning on `train_file`, LM loss and multiple-choice VQA on `val_file`.

    Paths naming shipped files (`lightning_prune/data/assets/...`, `pkg://...`) resolve from any folder
    (`lightning_prune._paths`).

    Args:
        train_file: LLaVA-format JSON (a list) or JSONL of training conversations.
        val_file: Held-out conversations; records with `options` are scored as multiple choice.
        image_folder: Folder the records' `image` paths are relative to.
        processor: Folder (usually the model folder) or Hub id of the LLaVA processor (tokenizer + image processor).
        template: Text of one user turn, with `{question}`.
        batch_size: Training batch size.
        eval_batch_size: Batch size of the evaluation loaders.
        seed: Seed of the shuffling (the order of epoch `e` is drawn from `(seed, e)`).
    """

    def __init__(
        self,
        train_file: str,
        val_file: str,
        image_folder: str,
        processor: str,
        template: str = _TEMPLATE,
        batch_size: int = 4,
        eval_batch_size: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_at_least("batch_size", batch_size, 1)
        check_at_least("eval_batch_size", eval_batch_size, 1)
        if "{question}" not in template:
            raise ValueError(f"`template` must contain '{{question}}', got {template!r}.")
        check_tokenizer_folder(resolve_path(processor))
        self.save_hyperparameters()  # the paths as given (`pkg://` kept), so a saved config stays portable
        self.train_file, self.val_file = resolve_path(train_file), resolve_path(val_file)
        self.image_folder, self.processor_name = Path(resolve_path(image_folder)), resolve_path(processor)
        self.template = template
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.processor = None
        self._datasets: dict[str, ConversationDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self._datasets:
            return
        from transformers import AutoProcessor

        self.processor = AutoProcessor.from_pretrained(self.processor_name)
        train = read_conversations(self.train_file, self.image_folder)
        val = read_conversations(self.val_file, self.image_folder)
        self._datasets = {
            "train": ConversationDataset(train, self.image_folder, self.processor, self.template, choices=False),
            "val": ConversationDataset(val, self.image_folder, self.processor, self.template, choices=True),
        }

    def _split_dataset(self, split: str) -> ConversationDataset:
        self.setup()
        return self._datasets[split]

    def _collate(self):
        pad_id = self.processor.tokenizer.pad_token_id or 0
        return lambda items: collate_conversations(items, pad_id)
