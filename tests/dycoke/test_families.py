"""Every registered family on its tiny random model: DyCoke off is the plain model, the kept counts follow the rule,
and at a decode step the pruned layers attend to exactly the selected entries; batches of two with left padding."""

import pytest
import torch
from _support.dycoke_spies import spy_decode_attention
from _support.video_families import FRAMES, padded_family_batch
from dycoke_fakes import generate

from lightning_prune.dycoke import merged_token_count
from lightning_prune.dycoke.families import FAMILY_NAMES, family_of
from lightning_prune.dycoke.hooks import DyCokeHooks, DyCokeSettings


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def family_model(request):
    """`(adapter, model, padded inputs of two videos)` for each family."""
    return padded_family_batch(request.param)


def _same_generation(first, second) -> bool:
    return torch.equal(first.sequences, second.sequences) and all(
        torch.equal(a, b) for a, b in zip(first.logits, second.logits, strict=True))


@pytest.mark.parametrize("variant", ["official", "refined"])
def test_family_with_zero_ratios_generates_the_same_tokens_and_logits(family_model, variant):
    adapter, model, inputs = family_model
    plain = generate(model, inputs, new_tokens=4)
    with DyCokeHooks(model, DyCokeSettings(merging_ratio=0.0, decode_prune_ratio=0.0, variant=variant)) as hooks:
        hooked = generate(model, inputs, new_tokens=4)
    assert family_of(model)[0].name == adapter.name
    assert _same_generation(plain, hooked)
    assert hooks.pop_stats()[0].visual_tokens_after == int((inputs["input_ids"][0] == hooks.video_token_id).sum())


@pytest.mark.parametrize(("variant", "ratio"), [("official", 0.7), ("refined", 0.7), ("official", 0.5)])
def test_family_kept_counts_follow_the_rule(family_model, variant, ratio):
    adapter, model, inputs = family_model
    with DyCokeHooks(model, DyCokeSettings(merging_ratio=ratio, decode_prune_ratio=0.0, variant=variant)) as hooks:
        generate(model, inputs, new_tokens=2)
    stats = hooks.pop_stats()[0]
    video_tokens = int((inputs["input_ids"][0] == hooks.video_token_id).sum())
    frames = FRAMES // adapter.frames_per_step
    trailing = getattr(adapter, "trailing", 0)
    per_frame = (video_tokens - trailing) // frames
    assert stats.visual_tokens_before == video_tokens
    assert stats.visual_tokens_after == merged_token_count(frames, per_frame, ratio, variant=variant) + trailing
    assert stats.prompt_tokens_before - stats.prompt_tokens_after == video_tokens - stats.visual_tokens_after


def _reference_selection(query, key, mask, candidates, keep):
    groups = query.shape[1] // key.shape[1]
    scores = (query.double() @ key.repeat_interleave(groups, 1).double().transpose(-1, -2))[:, :, 0] * 0.25
    if mask is not None:
        scores = scores.masked_fill(~mask[:, :, -1], float("-inf")) if mask.dtype == torch.bool else (
            scores + mask[:, :, -1].double())
    attention = scores.softmax(-1).mean(1)  # [B, S]
    return [sorted(candidates[b][attention[b, candidates[b]].argsort(descending=True)[:keep]].tolist())
            for b in range(len(candidates))]


@pytest.mark.parametrize("variant", ["official", "refined"])
def test_family_decode_layers_from_l_see_exactly_the_selected_entries(family_model, monkeypatch, variant):
    adapter, model, inputs = family_model
    calls, full_keys = spy_decode_attention(monkeypatch)
    settings = DyCokeSettings(merging_ratio=0.5, prune_layer=2, decode_prune_ratio=0.75, reuse_threshold=None,
                              variant=variant)
    with DyCokeHooks(model, settings) as hooks:
        generate(model, inputs, new_tokens=4)
        candidates, text = hooks.pruning.visual_positions, hooks.pruning.text_positions
    stats = hooks.pop_stats()[0]
    prompt, layers = stats.prompt_tokens_after, model.config.text_config.num_hidden_layers
    keep = int(candidates.shape[1] * 0.25)
    trailing = getattr(adapter, "trailing", 0)
    expected_candidates = stats.visual_tokens_after - (trailing + 1 if variant == "official" else 0)
    assert candidates.shape[1] == expected_candidates
    assert len(calls) == 3 * layers
    for step in range(3):
        length = prompt + step + 1
        layer_calls = calls[layers * step : layers * (step + 1)]
        assert all(key.shape[2] == length for _, _, key, _ in layer_calls[:2])  # layers < L see everything
        _, query, key, mask = layer_calls[1]
        selected = _reference_selection(query, key, mask, candidates, keep)
        for layer, _, pruned_key, _ in layer_calls[2:]:
            for b in range(2):
                attended = text[b].tolist() + selected[b] + list(range(prompt, length))
                assert torch.equal(pruned_key[b], full_keys[(layer, length)][b][:, attended])
