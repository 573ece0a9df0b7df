"""AlpacaDataModule on tiny files in the published format: the template, the loss mask, EOS, cutoff and padding."""

import json

import pytest
import torch
from llm_fakes import save_tiny_tokenizer
from transformers import AutoTokenizer

from lightning_prune.data.alpaca import AlpacaDataModule, alpaca_prompt, read_records

RECORDS = [
    {"instruction": "the cat sat on the mat", "input": "a dog ran in the park", "output": "the bird sang a song"},
    {"instruction": "we read the book", "input": "", "output": "she wrote a letter to the dog"},
    {"instruction": "the sun rose", "input": "", "output": "the cat sat"},
]


@pytest.fixture
def files(tmp_path):
    tokenizer = save_tiny_tokenizer(tmp_path / "tok")
    train = tmp_path / "alpaca.json"
    train.write_text(json.dumps(RECORDS))  # alpaca-cleaned ships one JSON list
    val = tmp_path / "val.jsonl"
    val.write_text("".join(json.dumps(r) + "\n" for r in RECORDS[:2]))
    return tokenizer, train, val


def test_alpaca_prompt_is_the_published_template():
    with_input = alpaca_prompt("Add.", "2 and 3", "5")
    assert with_input == ("Below is an instruction that describes a task, paired with an input that provides further "
                          "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                          "Add.\n\n### Input:\n2 and 3\n\n### Response:\n5")
    assert alpaca_prompt("Say hi.") == ("Below is an instruction that describes a task. Write a response that "
                                        "appropriately completes the request.\n\n### Instruction:\nSay hi.\n\n"
                                        "### Response:\n")


def test_alpaca_datamodule_masks_the_prompt_appends_eos_and_pads_right(files):
    tokenizer_dir, train, val = files
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    data = AlpacaDataModule(str(train), str(tokenizer_dir), val_file=str(val), batch_size=3, eval_batch_size=2)
    ids, labels = next(iter(data.val_dataloader()))
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    for row, record in enumerate(RECORDS[:2]):
        full = tokenizer(alpaca_prompt(**record))["input_ids"] + [eos]
        prompt = tokenizer(alpaca_prompt(record["instruction"], record["input"]))["input_ids"]
        n = len(full)
        assert ids[row, :n].tolist() == full and (ids[row, n:] == pad).all()
        assert labels[row, :len(prompt)].tolist() == [-100] * len(prompt)  # no loss on the prompt
        assert labels[row, len(prompt):n].tolist() == full[len(prompt):]  # the response and its EOS
        assert (labels[row, n:] == -100).all()
    assert ids.shape[1] == max(len(tokenizer(alpaca_prompt(**r))["input_ids"]) + 1 for r in RECORDS[:2])


def test_alpaca_datamodule_cutoff_train_on_inputs_and_held_out_split(files):
    tokenizer_dir, train, _ = files
    data = AlpacaDataModule(str(train), str(tokenizer_dir), val_size=1, cutoff_len=8, train_on_inputs=True,
                            batch_size=2)
    data.setup()
    assert len(data._examples["train"]) == 2 and len(data._examples["val"]) == 1
    ids, labels = next(iter(data.train_eval_dataloader()))
    assert ids.shape == (2, 8)  # truncated to the cutoff, no room for EOS
    torch.testing.assert_close(labels, ids)  # train_on_inputs: every token carries the loss


def test_alpaca_bad_inputs_are_one_message_each(files, tmp_path):
    tokenizer_dir, train, _ = files
    with pytest.raises(FileNotFoundError, match="`train_file` must be an existing Alpaca"):
        AlpacaDataModule(str(tmp_path / "missing.json"), str(tokenizer_dir)).setup()
    with pytest.raises(ValueError, match="`val_size` must be below the 3 records"):
        AlpacaDataModule(str(train), str(tokenizer_dir), val_size=3).setup()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt": "x"}]))
    with pytest.raises(ValueError, match=r"must have string fields \['instruction', 'output'\]"):
        read_records(bad)
