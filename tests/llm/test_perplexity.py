"""Perplexity presets against hand computations written from the published evaluation code's definitions."""

import math

import pytest
import torch
import torch.nn.functional as F
from llm_fakes import SENTENCES, save_tiny_tokenizer, tiny_llama

from lightning_prune.evaluation.perplexity import encode, file_perplexity, load_texts, perplexity, window_spans

TEXTS = SENTENCES * 3  # 18 rows, 90+ word tokens


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(save_tiny_tokenizer(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def model():
    network = tiny_llama()
    network.config.max_position_embeddings = 16  # the Wanda/SparseGPT window (RoPE needs no resize)
    return network


def _ids(tokenizer):
    return tokenizer("\n\n".join(TEXTS))["input_ids"]


def test_perplexity_llm_pruner_preset_equals_window_by_window_hand_computation(model, tokenizer):
    ids, seq_len = _ids(tokenizer), 8
    nll, count = 0.0, 0
    for w in range(len(ids) // seq_len):  # LLM-Pruner: non-overlapping windows, exp of the mean token NLL
        window = torch.tensor([ids[w * seq_len:(w + 1) * seq_len]])
        with torch.no_grad():
            logp = torch.log_softmax(model(window).logits[0].double(), -1)
        for t in range(seq_len - 1):
            nll -= float(logp[t, window[0, t + 1]])
            count += 1
    expected = math.exp(nll / count)
    assert perplexity(model, tokenizer, TEXTS, seq_len=8, preset="llm_pruner") == pytest.approx(expected, rel=1e-6)
    assert perplexity(model, tokenizer, TEXTS, seq_len=8, batch_size=3) == pytest.approx(expected, rel=1e-6)
    # the preset's own window is 128 tokens: the 90-odd tokens of TEXTS hold none
    with pytest.raises(ValueError, match="at least one window of `seq_len` 128"):
        perplexity(model, tokenizer, TEXTS, preset="llm_pruner")


def test_perplexity_wanda_preset_uses_context_length_windows(model, tokenizer):
    ids = torch.tensor(_ids(tokenizer))
    seqlen = model.config.max_position_embeddings  # 16
    nlls = []
    for i in range(len(ids) // seqlen):  # Wanda's eval: mean CE per window * seqlen, summed, / (n * seqlen)
        batch = ids[i * seqlen:(i + 1) * seqlen][None]
        with torch.no_grad():
            logits = model(batch).logits
        loss = F.cross_entropy(logits[0, :-1].double(), batch[0, 1:])
        nlls.append(loss * seqlen)
    expected = math.exp(float(torch.stack(nlls).sum() / (len(nlls) * seqlen)))
    assert perplexity(model, tokenizer, TEXTS, preset="wanda") == pytest.approx(expected, rel=1e-6)
    assert perplexity(model, tokenizer, TEXTS, preset="sparsegpt") == pytest.approx(expected, rel=1e-6)


def test_perplexity_sliding_equals_the_strided_loop_of_the_transformers_guide(model, tokenizer):
    ids = torch.tensor(_ids(tokenizer))[None]
    max_length, stride, n = 12, 5, ids.shape[1]
    total, tokens, prev_end = 0.0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        target_len = end - prev_end
        window = ids[:, begin:end]
        labels = window.clone()
        labels[:, :-target_len] = -100
        with torch.no_grad():
            loss = model(window, labels=labels).loss
        valid = int((labels[:, 1:] != -100).sum())
        total += float(loss) * valid
        tokens += valid
        prev_end = end
        if end == n:
            break
    got = perplexity(model, tokenizer, TEXTS, seq_len=12, windows="sliding", stride=5)
    assert got == pytest.approx(math.exp(total / tokens), rel=1e-5)
    spans = window_spans(n, 12, "sliding", 5)
    scored = [t for _, end, first in spans for t in range(first, end)]
    assert scored == list(range(1, n))  # every target scored exactly once


def test_load_texts_reads_wikitext_and_ptb_layouts(tmp_path, model, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    wiki = tmp_path / "wikitext-2-raw-v1" / "test-00000-of-00001.parquet"
    wiki.parent.mkdir()
    rows = ["", " = Valkyria = \n", ""] + [s + " \n" for s in TEXTS]
    pq.write_table(pa.table({"text": rows}), wiki)
    assert load_texts(wiki) == rows
    ptb = tmp_path / "ptb.jsonl"
    ptb.write_text("".join(f'{{"sentence": "{s}"}}\n' for s in TEXTS))
    assert load_texts(ptb) == TEXTS
    raw = tmp_path / "wiki.test.raw"
    raw.write_text("".join(r for r in rows if r) )
    assert load_texts(raw)[0] == " = Valkyria = \n"
    expected = perplexity(model, tokenizer, rows, seq_len=8)
    assert file_perplexity(model, tokenizer, wiki, seq_len=8) == pytest.approx(expected)
    assert len(encode(tokenizer, rows)) > 8


def test_perplexity_bad_inputs_raise_before_compute(tmp_path, model, tokenizer):
    with pytest.raises(FileNotFoundError, match="perplexity file .* must exist"):
        load_texts(tmp_path / "missing.parquet")
    short = tmp_path / "short.txt"
    short.write_text("the cat sat\n")
    with pytest.raises(ValueError, match="at least one window of `seq_len` 8 tokens, got 3 tokens"):
        file_perplexity(model, tokenizer, short, seq_len=8)
    with pytest.raises(ValueError, match="`field` must be a column"):
        load_texts(short, field="sentence")
    with pytest.raises(ValueError, match="`preset` must be one of"):
        perplexity(model, tokenizer, TEXTS, preset="ppl")
    with pytest.raises(ValueError, match="`windows` must be one of"):
        perplexity(model, tokenizer, TEXTS, seq_len=8, windows="strided")
    with pytest.raises(ValueError, match="`stride` must be an integer in"):
        perplexity(model, tokenizer, TEXTS, seq_len=8, windows="sliding", stride=9)
    with pytest.raises(ValueError, match="`seq_len` must be given"):
        perplexity(model, tokenizer, TEXTS)
    bad = tmp_path / "t.csv"
    bad.write_text("x")
    with pytest.raises(ValueError, match="must end in one of"):
        load_texts(bad)
