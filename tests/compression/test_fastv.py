"""FastV against a re-implementation of the published KV-cache code (pkunlp-icler/FastV `fastv_kvcache.py`, and the
FASTV_INPLACE branch of its `modeling_llama.py`): the kept positions, and the generated tokens and logits on every
family's tiny model in a left-padded batch of two, under eager attention and under SDPA (one row computed)."""

import pytest
import torch
from compression_fakes import generate, video_token_id
from reference_llm import capture_text_inputs, reference_generate

from lightning_prune.compression.fastv import FastVMethod, fastv_keep_positions
from lightning_prune.compression.hooks import CompressionHooks


def published_keep(attention: torch.Tensor, sys_length: int, image_length: int, ratio: float) -> torch.Tensor:
    """The published rule for one sample: `attention` [H, S] is layer K - 1's last row per head."""
    average = attention.mean(dim=0)  # torch.mean(last_layer_attention, dim=1)[0][-1]
    top = average[sys_length:sys_length + image_length].topk(int(image_length * ratio)).indices + sys_length
    keep = torch.cat((torch.arange(sys_length), top, torch.arange(sys_length + image_length, attention.shape[-1])))
    return keep.sort().values


@pytest.mark.parametrize("ratio", [0.5, 0.25, 0.15, 1.0])
def test_keep_positions_match_the_published_rule(ratio):
    generator = torch.Generator().manual_seed(0)
    attention = torch.rand(3, 4, 90, generator=generator).softmax(-1)
    visual_mask = torch.zeros(3, 90, dtype=torch.bool)
    starts = [5, 11, 30]
    for sample, start in enumerate(starts):
        visual_mask[sample, start:start + 48] = True
    kept = fastv_keep_positions(attention, visual_mask, ratio)
    for sample, start in enumerate(starts):
        assert torch.equal(kept[sample], published_keep(attention[sample], start, 48, ratio))
        assert len(kept[sample]) == 90 - 48 + int(48 * ratio)


def test_keep_positions_with_visual_tokens_split_by_text():
    # Qwen3-VL puts timestamps between the frames: the visual tokens are not one block. Brute force: rank them all.
    generator = torch.Generator().manual_seed(1)
    attention = torch.rand(1, 2, 40, generator=generator)
    visual_mask = torch.zeros(1, 40, dtype=torch.bool)
    visual_mask[0, 3:13] = visual_mask[0, 16:26] = True
    scores = attention[0].mean(0)
    visual = [p for p in range(40) if visual_mask[0, p]]
    best = sorted(visual, key=lambda p: -float(scores[p]))[:5]
    expected = sorted([p for p in range(40) if not visual_mask[0, p]] + best)
    assert fastv_keep_positions(attention, visual_mask, 0.25)[0].tolist() == expected


def test_keep_positions_refuse_bad_shapes_and_ratios():
    with pytest.raises(ValueError, match=r"`last_row_attention` must be \[B, H, S\] with \[B, S\] = visual_mask's "
                                         r"\(2, 10\), got \(2, 10\)"):
        fastv_keep_positions(torch.rand(2, 10), torch.zeros(2, 10, dtype=torch.bool), 0.5)
    with pytest.raises(ValueError, match=r"`keep_ratio` must be in \[0, 1\], got 1\.5"):
        fastv_keep_positions(torch.rand(2, 1, 10), torch.zeros(2, 10, dtype=torch.bool), 1.5)


def _published_batch_rule(ratio):
    def keep(attention, visual_mask):  # per sample, the published rule over that sample's visual tokens
        rows = []
        for scores, is_visual in zip(attention, visual_mask, strict=True):
            visual = is_visual.nonzero()[:, 0]
            top = visual[scores[visual].topk(int(len(visual) * ratio)).indices]
            rows.append(torch.cat([(~is_visual).nonzero()[:, 0], top]).sort().values)
        return torch.stack(rows)

    return keep


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize(("K", "ratio"), [(2, 0.5), (3, 0.25)])
def test_fastv_generates_as_the_published_kv_cache_code(family_model, implementation, K, ratio):  # noqa: N803
    _, model, inputs = family_model
    steps = 3
    calls = capture_text_inputs(model, inputs, steps)
    tokens, logits, keep = reference_generate(model, calls, inputs["input_ids"] == video_token_id(model),
                                              _published_batch_rule(ratio), K, steps)
    text_config = model.config.text_config
    model.model.language_model.set_attn_implementation(implementation)
    try:
        with CompressionHooks(model, FastVMethod(K=K, ratio=ratio)) as hooks:
            output = generate(model, inputs, new_tokens=steps)
            if implementation == "sdpa":
                assert text_config._attn_implementation == "compression_sdpa"  # no switch to eager
            kept = hooks.layer_positions
    finally:
        model.model.language_model.set_attn_implementation("sdpa")
    assert torch.equal(kept[K], keep)
    assert all(torch.equal(kept[layer], keep) for layer in range(K, text_config.num_hidden_layers))
    assert torch.equal(output.sequences[:, -steps:], tokens)
    for ours, theirs in zip(output.logits, logits, strict=True):
        torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)
