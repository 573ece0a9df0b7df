"""TextDataModule: JSONL / plain text into EOS-joined fixed-length token blocks; clear messages for bad input."""

import json

import pytest
import torch
from llm_fakes import SENTENCES, save_tiny_tokenizer, write_text_files
from transformers import AutoTokenizer

from lightning_prune.data.text import TextDataModule


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return save_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def test_text_blocks_are_the_eos_joined_token_stream_cut_to_block_size(tmp_path, tokenizer_dir):
    train, val = write_text_files(tmp_path)
    data = TextDataModule([str(train)], str(tokenizer_dir), val_files=[str(val)], block_size=5, batch_size=2)
    data.setup("fit")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    stream = []
    for text in SENTENCES * 4:  # by hand: each sentence's ids, then EOS
        stream += [tokenizer.get_vocab()[word] for word in text.split()] + [tokenizer.eos_token_id]
    expected = torch.tensor(stream[: len(stream) // 5 * 5]).view(-1, 5)
    ids, labels = next(iter(data.train_eval_dataloader()))
    assert torch.equal(torch.cat([b[0] for b in data.train_eval_dataloader()]), expected)
    assert torch.equal(ids, labels) and ids.dtype == torch.long
    val_tokens = sum(len(text.split()) + 1 for text in SENTENCES[:3])
    assert torch.cat([b[0] for b in data.val_dataloader()]).shape == (val_tokens // 5, 5)
    assert data.vocab_size == len(tokenizer)


def test_text_without_val_files_holds_out_the_last_blocks(tmp_path, tokenizer_dir):
    train, _ = write_text_files(tmp_path)
    data = TextDataModule([str(train)], str(tokenizer_dir), block_size=4, val_fraction=0.25)
    data.setup("fit")
    everything = torch.cat([b[0] for b in data.train_eval_dataloader()] + [b[0] for b in data.val_dataloader()])
    assert len(torch.cat([b[0] for b in data.val_dataloader()])) == round(len(everything) * 0.25)


def test_text_missing_tokenizer_is_one_clear_message(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"`tokenizer` must be a folder holding a tokenizer .* got '.*empty'"):
        TextDataModule(["train.txt"], str(tmp_path / "empty"))


def test_text_jsonl_line_without_the_text_field_is_rejected(tmp_path, tokenizer_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"body": "the cat"}) + "\n")
    data = TextDataModule([str(bad)], str(tokenizer_dir), block_size=2)
    with pytest.raises(ValueError, match=r"`text_field` 'text' must be a key of every line .* keys \['body'\]"):
        data.setup("fit")


def test_text_too_short_for_one_block_is_rejected(tmp_path, tokenizer_dir):
    short = tmp_path / "short.txt"
    short.write_text("the cat\n")
    data = TextDataModule([str(short)], str(tokenizer_dir), val_files=[str(short)], block_size=50)
    with pytest.raises(ValueError, match="the train files must hold at least one block of `block_size` 50"):
        data.setup("fit")
