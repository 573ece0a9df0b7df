"""The interface on every family's tiny model: a method keeping everything is the plain model (tokens and logits),
budgets keep the counts they promise in padded batches, and the registry / hooks refuse bad input before compute."""

import pytest
import torch
from compression_fakes import generate, same_generation, video_token_id

from lightning_prune.compression import METHOD_NAMES, get_method
from lightning_prune.compression.fastv import FastVMethod
from lightning_prune.compression.floors import RandomTokensMethod, UniformSpatialMethod, UniformTemporalMethod
from lightning_prune.compression.hooks import CompressionHooks

EVERYTHING = [FastVMethod(ratio=1.0), RandomTokensMethod(keep_ratio=1.0), UniformSpatialMethod(keep_ratio=1.0),
              UniformTemporalMethod(keep_ratio=1.0)]


@pytest.mark.parametrize("method", EVERYTHING, ids=lambda method: method.name)
def test_keeping_everything_is_the_plain_model(family_model, method):
    _, model, inputs = family_model
    plain = generate(model, inputs)
    with method.make_hooks(model) as hooks:
        hooked = generate(model, inputs)
    assert same_generation(plain, hooked)
    stats = hooks.pop_stats()[0]
    assert stats.visual_tokens_after == stats.visual_tokens_before
    assert not hooks.installed


@pytest.mark.parametrize("method", [FastVMethod(ratio=0.25), RandomTokensMethod(keep_ratio=0.25),
                                    UniformSpatialMethod(keep_ratio=0.25), UniformTemporalMethod(keep_ratio=0.25)],
                         ids=lambda method: method.name)
def test_a_quarter_budget_keeps_a_quarter_in_a_padded_batch(family_model, method):
    adapter, model, inputs = family_model
    with method.make_hooks(model) as hooks:
        output = generate(model, inputs, new_tokens=3)
    stats = hooks.pop_stats()[0]
    trailing = getattr(adapter, "trailing", 0)
    frame_tokens = stats.visual_tokens_before - trailing
    if method.name == "fastv":  # every video token is a candidate (LLaVA-OneVision's newline too)
        assert stats.visual_tokens_after == stats.visual_tokens_before // 4
    else:  # the floors keep the tokens after the frames
        assert stats.visual_tokens_after == frame_tokens // 4 + trailing
    assert output.sequences.shape == (2, inputs["input_ids"].shape[1] + 3)
    assert len(stats.full_kv_lengths) == 2 and all(torch.isfinite(logits).all() for logits in output.logits)
    if method.name == "fastv":  # the cut layers attend to the kept tokens plus those generated so far
        kept_prompt = stats.prompt_tokens_after - (stats.visual_tokens_before - stats.visual_tokens_after)
        assert stats.attended_kv_lengths == [kept_prompt + 1, kept_prompt + 2]
    else:
        assert stats.prompt_tokens_after == stats.prompt_tokens_before - (frame_tokens - frame_tokens // 4)


def test_the_registry_lists_the_methods_for_an_unknown_name():
    with pytest.raises(ValueError, match=r"`method` must be one of \['dycoke', 'fastv', 'random', .*got 'fastvv'"):
        get_method("fastvv")
    assert {"dycoke", "fastv", "random", "uniform_spatial", "uniform_temporal"} <= set(METHOD_NAMES)


def test_the_registry_refuses_a_setting_the_method_does_not_have():
    with pytest.raises(ValueError, match=r"fastv's settings must be among \['K', 'ratio'\], got unknown keep_ratio"):
        get_method("fastv", keep_ratio=0.5)


@pytest.mark.parametrize(("name", "settings", "message"), [
    ("fastv", {"K": 0}, r"`K` must be an integer >= 1, got 0\."),
    ("fastv", {"ratio": 1.5}, r"`ratio` must be in \(0, 1\], got 1\.5\."),
    ("random", {"keep_ratio": 0.0}, r"`keep_ratio` must be in \(0, 1\], got 0\.0\."),
    ("uniform_spatial", {"keep_ratio": -1}, r"`keep_ratio` must be in \(0, 1\], got -1\."),
    ("uniform_temporal", {"keep_ratio": "half"}, r"`keep_ratio` must be in \(0, 1\], got 'half'\."),
    ("dycoke", {"merging_ratio": 1.0}, r"`merging_ratio` must be in \[0, 1\), got 1\.0\."),
])
def test_parameters_out_of_range_are_refused(name, settings, message):
    with pytest.raises(ValueError, match=message):
        get_method(name, **settings)


def test_a_layer_beyond_the_llm_is_refused_before_compute(family_model):
    _, model, _ = family_model
    with pytest.raises(ValueError, match=r"`K` must be below the LLM's 4 layers \(1 to 3\), got 4\."):
        CompressionHooks(model, FastVMethod(K=4))


def test_flash_attention_is_refused_where_attention_weights_are_needed(family_model):
    _, model, _ = family_model
    text_config = model.config.text_config
    original = text_config._attn_implementation
    text_config._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(ValueError, match=r"fastv reads attention weights .*got 'flash_attention_2'"):
            CompressionHooks(model, FastVMethod())
        CompressionHooks(model, UniformTemporalMethod())  # a floor reads no attention: any implementation will do
    finally:
        text_config._attn_implementation = original


def test_dycoke_as_a_method_is_dycoke_unchanged(family_model):
    from lightning_prune.compression.dycoke import DyCokeMethod
    from lightning_prune.dycoke.hooks import DyCokeHooks, DyCokeSettings

    _, model, inputs = family_model
    with DyCokeHooks(model, DyCokeSettings(merging_ratio=0.5, decode_prune_ratio=0.5)) as direct:
        expected = generate(model, inputs)
    with DyCokeMethod(merging_ratio=0.5, decode_prune_ratio=0.5).make_hooks(model) as hooks:
        through = generate(model, inputs)
    assert isinstance(hooks, DyCokeHooks)
    assert same_generation(expected, through)
    assert hooks.pop_stats()[0].visual_tokens_after == direct.pop_stats()[0].visual_tokens_after
    assert DyCokeMethod.at_budget(0.25).merging_ratio == 0.99
    assert DyCokeMethod.at_budget(0.4).merging_ratio == pytest.approx(0.8)


def test_a_cut_with_earlier_cache_hides_the_dropped_tokens_from_every_layer(family_model):
    """A toy method cutting the second half of the visual tokens before layer 2 and from the earlier layers' cache,
    against a decoder loop that crops those layers' cache physically."""
    from dataclasses import dataclass

    from reference_llm import capture_text_inputs, reference_generate

    from lightning_prune.compression.base import CompressionMethod, LayerCut

    def keep_first_half(visual_mask):
        rows = []
        for is_visual in visual_mask:
            visual = is_visual.nonzero()[:, 0]
            rows.append(torch.cat([(~is_visual).nonzero()[:, 0], visual[: len(visual) // 2]]).sort().values)
        return torch.stack(rows)

    @dataclass(frozen=True)
    class HalfCut(CompressionMethod):
        name = "half_cut"

        def cut_layers(self, num_layers):
            return (2,)

        def cut_layer(self, context):
            return LayerCut(keep_first_half(context.visual_mask), earlier_cache=True)

    _, model, inputs = family_model
    calls = capture_text_inputs(model, inputs, 3)
    tokens, logits, _ = reference_generate(model, calls, inputs["input_ids"] == video_token_id(model),
                                           lambda attention, visual_mask: keep_first_half(visual_mask), 2, 3,
                                           earlier_cache=True)
    with CompressionHooks(model, HalfCut()):
        output = generate(model, inputs, new_tokens=3)
    assert torch.equal(output.sequences[:, -3:], tokens)
    for ours, theirs in zip(output.logits, logits, strict=True):
        torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)


def test_a_cut_before_qwen3_vls_deepstack_layers_end_is_refused(family_model):
    from dataclasses import dataclass

    from lightning_prune.compression.base import CompressionMethod

    @dataclass(frozen=True)
    class CutAtZero(CompressionMethod):
        name = "cut_at_zero"

        def cut_layers(self, num_layers):
            return (0,)

    adapter, model, _ = family_model
    CompressionHooks(model, FastVMethod(K=1))  # the tiny Qwen3-VL adds DeepStack after layer 0 only: 1 is fine
    if adapter.name != "qwen3_vl":
        CompressionHooks(model, CutAtZero())  # no DeepStack: any layer will do
        return
    with pytest.raises(ValueError, match=r"cut_at_zero cuts tokens before LLM layer 0, but this model adds DeepStack "
                                         r"features after layers 0 to 0: the cut layer must be >= 1"):
        CompressionHooks(model, CutAtZero())
