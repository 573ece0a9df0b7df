"""DyCoke on a tiny random LLaVA-OneVision: equivalence, the merged prefill, the pruned decode step, removal."""

import pytest
import torch
from _support.dycoke_spies import spy_decode_attention
from dycoke_fakes import generate, make_inputs
from transformers.modeling_outputs import BaseModelOutputWithPooling

from lightning_prune.dycoke import ttm_keep_positions
from lightning_prune.dycoke.hooks import DyCokeHooks, DyCokeSettings

TOKENS_PER_FRAME = 16


def _same_generation(first, second) -> bool:
    return torch.equal(first.sequences, second.sequences) and all(
        torch.equal(a, b) for a, b in zip(first.logits, second.logits, strict=True)
    )


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_hooks_with_zero_ratios_give_the_same_tokens_and_logits(tiny_llava, padded_inputs, attention):
    model = tiny_llava[0]
    model.set_attn_implementation({"text_config": attention})
    try:
        plain = generate(model, padded_inputs)
        with DyCokeHooks(model, DyCokeSettings(merging_ratio=0.0, decode_prune_ratio=0.0)) as hooks:
            assert model.config.text_config._attn_implementation == f"dycoke_{attention}"
            hooked = generate(model, padded_inputs)
        assert _same_generation(plain, hooked)
        assert hooks.pop_stats()[0].visual_tokens_after == 8 * TOKENS_PER_FRAME + 1
    finally:
        model.set_attn_implementation({"text_config": "sdpa"})


def test_hooks_merge_the_prefill_like_a_prompt_built_without_the_merged_tokens(tiny_llava, padded_inputs):
    model, ratio = tiny_llava[0], 0.5
    features = model.model.get_video_features(padded_inputs["pixel_values_videos"], return_dict=True).pooler_output
    frame_tokens = features.shape[1] - 1
    keep_video, kept_features = [], []
    for sample in features:
        positions = ttm_keep_positions(sample[:frame_tokens].view(8, TOKENS_PER_FRAME, -1), ratio, variant="refined")
        positions = torch.cat([positions, torch.tensor([frame_tokens])])  # the newline token stays
        keep_video.append(positions)
        kept_features.append(sample[positions])
    input_ids, mask = padded_inputs["input_ids"], padded_inputs["attention_mask"]
    kept_ids, kept_mask = [], []
    for row in range(2):
        video = (input_ids[row] == model.config.video_token_id).nonzero().flatten()
        dropped = set(video.tolist()) - set(video[keep_video[row]].tolist())
        keep = [i for i in range(input_ids.shape[1]) if i not in dropped]
        kept_ids.append(input_ids[row, keep])
        kept_mask.append(mask[row, keep])
    reference = generate(
        model,
        {"input_ids": torch.stack(kept_ids), "attention_mask": torch.stack(kept_mask),
         "mm_encoder_outputs": {"video": BaseModelOutputWithPooling(pooler_output=torch.stack(kept_features))}},
    )
    with DyCokeHooks(model, DyCokeSettings(merging_ratio=ratio, decode_prune_ratio=0.0, variant="refined")) as hooks:
        merged = generate(model, padded_inputs)
    assert torch.equal(merged.sequences[:, input_ids.shape[1]:], reference.sequences[:, len(kept_ids[0]):])
    for ours, theirs in zip(merged.logits, reference.logits, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    stats = hooks.pop_stats()[0]
    assert stats.visual_tokens_after == len(keep_video[0]) == 2 * 16 + 6 * 8 + 1  # anchors whole, others keep 8
    assert stats.prompt_tokens_before - stats.prompt_tokens_after == 129 - stats.visual_tokens_after


def _reference_selection(query, key, mask, visual, keep):
    groups = query.shape[1] // key.shape[1]
    scores = (query.double() @ key.repeat_interleave(groups, 1).double().transpose(-1, -2))[:, :, 0] * 0.25
    if mask is not None:
        scores = scores.masked_fill(~mask[:, :, -1], float("-inf"))
    attention = scores.softmax(-1).mean(1)  # [B, S]
    return [sorted(visual[b][attention[b, visual[b]].argsort(descending=True)[:keep]].tolist())
            for b in range(len(visual))]


@pytest.mark.parametrize("questions", [["What moves?"], ["What moves?", "Which shape crosses the frame first?"]])
def test_decode_step_layers_from_l_see_exactly_the_selected_entries(tiny_llava, monkeypatch, questions):
    model, processor = tiny_llava
    inputs = make_inputs(processor, questions)
    calls, full_keys = spy_decode_attention(monkeypatch)
    settings = DyCokeSettings(merging_ratio=0.5, prune_layer=2, decode_prune_ratio=0.75, reuse_threshold=None,
                              variant="refined")
    with DyCokeHooks(model, settings) as hooks:
        generate(model, inputs, new_tokens=4)
        visual, text = hooks.pruning.visual_positions, hooks.pruning.text_positions
    prompt = hooks.pop_stats()[0].prompt_tokens_after
    keep = int(0.25 * visual.shape[1])
    assert len(calls) == 3 * 4  # three decode steps, four layers
    for step in range(3):
        length = prompt + step + 1
        layer_calls = calls[4 * step : 4 * step + 4]
        assert [layer for layer, *_ in layer_calls] == [0, 1, 2, 3]
        assert all(key.shape[2] == length for _, _, key, _ in layer_calls[:2])  # layers < L see everything
        _, query, key, mask = layer_calls[1]
        selected = _reference_selection(query, key, mask, visual, keep)
        for layer, _, pruned_key, pruned_mask in layer_calls[2:]:
            for b in range(len(questions)):
                expected = text[b].tolist() + selected[b] + list(range(prompt, length))
                assert torch.equal(pruned_key[b], full_keys[(layer, length)][b][:, expected])
                if pruned_mask is not None:
                    assert pruned_mask[b, 0, -1].tolist() == [bool(mask[b, 0, -1, i]) for i in expected]


def test_hooks_prune_eager_attention_like_sdpa(tiny_llava, padded_inputs):
    model, settings = tiny_llava[0], DyCokeSettings(merging_ratio=0.5, prune_layer=2, decode_prune_ratio=0.5)
    results = {}
    try:
        for attention in ("eager", "sdpa"):  # eager masks are additive floats, SDPA's booleans: both are gathered
            model.set_attn_implementation({"text_config": attention})
            with DyCokeHooks(model, settings) as hooks:
                results[attention] = generate(model, padded_inputs, new_tokens=5)
            assert len(hooks.pop_stats()[0].attended_kv_lengths) == 4
    finally:
        model.set_attn_implementation({"text_config": "sdpa"})
    assert torch.equal(results["eager"].sequences, results["sdpa"].sequences)
    for eager, sdpa in zip(results["eager"].logits, results["sdpa"].logits, strict=True):
        torch.testing.assert_close(eager, sdpa, rtol=1e-4, atol=1e-4)


def test_hooks_removal_restores_the_original_model(tiny_llava, padded_inputs):
    model = tiny_llava[0]
    before = generate(model, padded_inputs)
    hooks = DyCokeHooks(model, DyCokeSettings(merging_ratio=0.7, decode_prune_ratio=0.7)).install()
    assert hooks.installed
    changed = generate(model, padded_inputs)
    hooks.remove()
    after = generate(model, padded_inputs)
    assert not _same_generation(before, changed)  # DyCoke did change the computation ...
    assert _same_generation(before, after)  # ... and nothing of it is left
    assert model.config.text_config._attn_implementation == "sdpa"
    assert not model.model._forward_pre_hooks and not hooks.installed


def test_hooks_leave_text_only_prompts_alone(tiny_llava):
    model, processor = tiny_llava
    inputs = dict(processor.tokenizer(["Hello there"], return_tensors="pt"))
    plain = generate(model, inputs)
    with DyCokeHooks(model) as hooks:
        hooked = generate(model, inputs)
    assert _same_generation(plain, hooked) and hooks.pop_stats() == []


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"merging_ratio": 1.0}, r"`merging_ratio` must be in \[0, 1\), got 1.0"),
        ({"merging_ratio": -0.2}, r"`merging_ratio` must be in \[0, 1\), got -0.2"),
        ({"decode_prune_ratio": 1.5}, r"`decode_prune_ratio` must be in \[0, 1\), got 1.5"),
        ({"prune_layer": 0}, r"`prune_layer` must be an integer >= 1, got 0"),
        ({"window": 0}, r"`window` must be an integer >= 1, got 0"),
        ({"reuse_threshold": 1.5}, r"`reuse_threshold` must be in \[-1, 1\] or None, got 1.5"),
        ({"variant": "paper"}, r"`variant` must be one of \['official', 'refined'\], got 'paper'"),
        ({"window": 8}, r"`window` must be 4 with variant='official' \(the published code's\), got 8"),
    ],
)
def test_settings_reject_bad_values(settings, match):
    with pytest.raises(ValueError, match=match):
        DyCokeSettings(**settings)


def test_settings_report_every_problem_at_once():
    with pytest.raises(ValueError, match=r"`merging_ratio`.*`prune_layer`.*`window`"):
        DyCokeSettings(merging_ratio=2.0, prune_layer=-1, window=0)


def test_hooks_reject_a_prune_layer_beyond_the_model(tiny_llava):
    with pytest.raises(ValueError, match=r"`prune_layer` must be below the LLM's 4 layers \(1 to 3\), got 4"):
        DyCokeHooks(tiny_llava[0], DyCokeSettings(prune_layer=4))


def test_hooks_reject_other_attention_implementations(tiny_llava, monkeypatch):
    monkeypatch.setattr(tiny_llava[0].config.text_config, "_attn_implementation_internal", "flex_attention")
    with pytest.raises(ValueError, match=r"attention implementation \['eager', 'sdpa'\], got 'flex_attention'"):
        DyCokeHooks(tiny_llava[0])


def test_hooks_reject_a_model_without_a_family_adapter():
    with pytest.raises(TypeError, match=r"no family adapter for Linear; supported families: \['llava_onevision'"):
        DyCokeHooks(torch.nn.Linear(2, 2))


def test_hooks_reject_an_unknown_or_mismatched_family(tiny_llava):
    with pytest.raises(ValueError, match=r"`family` must be one of \['llava_onevision'.*\], got 'gemma'"):
        DyCokeHooks(tiny_llava[0], family="gemma")


def test_hooks_refuse_to_install_twice(tiny_llava):
    with DyCokeHooks(tiny_llava[0]) as hooks, pytest.raises(RuntimeError, match="already installed"):
        hooks.install()


def test_hooks_refuse_inputs_they_cannot_handle(tiny_llava, padded_inputs):
    model = tiny_llava[0]
    ids, mask = padded_inputs["input_ids"], padded_inputs["attention_mask"]
    pixels = padded_inputs["pixel_values_videos"]
    embeds = model.get_input_embeddings()(ids)
    with DyCokeHooks(model), torch.inference_mode():
        with pytest.raises(ValueError, match=r"DyCoke needs `input_ids` .* got `inputs_embeds`"):
            model(inputs_embeds=embeds, pixel_values_videos=pixels)
        one_short = ids.clone()
        one_short[1, (ids[1] == model.config.video_token_id).nonzero()[0]] = 0
        with pytest.raises(ValueError, match=r"Every prompt must hold 129 video tokens .* got \[129, 128\]"):
            model(input_ids=one_short, pixel_values_videos=pixels)
        with pytest.raises(ValueError, match=r"Expected F \* 16 \+ 1 video tokens per sample, got 20"):
            model(input_ids=ids, mm_encoder_outputs={"video": BaseModelOutputWithPooling(
                pooler_output=torch.zeros(2, 20, 64))})
        with pytest.raises(ValueError, match=r"needs a 2-D `attention_mask`"):
            model(input_ids=ids, attention_mask=mask[:, None, None, :].bool(), pixel_values_videos=pixels)
        cached = model(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels, use_cache=True).cache
        with pytest.raises(ValueError, match=r"DyCoke decodes one token per step, got 2 tokens after \d+ cached"):
            model(input_ids=ids[:, :2], cache=cached, use_cache=True)
        with pytest.raises(ValueError, match=r"Expected a 2-D decode `attention_mask` over \d+ tokens, got shape"):
            model(input_ids=ids[:, :1], attention_mask=mask, cache=cached, use_cache=True)
