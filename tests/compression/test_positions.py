"""`positions` of the methods that drop tokens before the LLM: `published` renumbers the shorter prompt (as their
published code's LLM sees it), `original` keeps each kept token's whole-prompt position. Checked against the
uncompressed model with the dropped tokens masked out instead (same position ids): the same logits at every step."""

import pytest
import torch
from _support.video_families import padded_family_batch
from _support.video_positions import greedy_steps, recorded_positions
from compression_fakes import first_sample, generate, video_token_id

from lightning_prune.compression import method_class
from lightning_prune.compression.floors import UniformTemporalMethod
from lightning_prune.dycoke.families import FAMILY_NAMES

SHORTENING = ["random", "uniform_spatial", "uniform_temporal", "visionzip", "prunevid"]
ONE_D_LLAVA = [name for name in FAMILY_NAMES if name.startswith("llava")]


@pytest.mark.parametrize("family", ONE_D_LLAVA)
def test_original_positions_equal_masking_out_the_dropped_frames(family):
    adapter, model, inputs = padded_family_batch(family)
    with torch.inference_mode():
        video = adapter.encode_video(model.model, dict(inputs))
    frames, per_frame = video.num_frames, video.tokens_per_frame
    dropped_frames = torch.arange(frames) % 2 == 1  # keep_ratio 0.5 of 8 frames keeps frames 0, 2, 4, 6
    dropped = torch.cat([dropped_frames.repeat_interleave(per_frame), torch.zeros(video.trailing, dtype=torch.bool)])
    mask = inputs["attention_mask"].clone()
    for b in range(mask.shape[0]):
        columns = (inputs["input_ids"][b] == video_token_id(model)).nonzero().flatten()
        mask[b, columns[dropped]] = 0
    reference = greedy_steps(model, inputs, mask)
    method = UniformTemporalMethod(keep_ratio=0.5, positions="original")
    with method.make_hooks(model) as hooks:
        shortened = greedy_steps(model, inputs, inputs["attention_mask"])
    assert hooks.stats[0].visual_tokens_after == int((~dropped).sum())
    for step, (got, want) in enumerate(zip(shortened, reference, strict=True)):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=f"step {step}")
    with UniformTemporalMethod(keep_ratio=0.5).make_hooks(model):  # published: renumbered, another input
        renumbered = greedy_steps(model, inputs, inputs["attention_mask"])
    assert not torch.allclose(renumbered[0], reference[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", SHORTENING)
def test_every_prompt_shortening_method_takes_the_position_rule(name):
    _, model, inputs = padded_family_batch("llava_onevision")
    single = first_sample(inputs)  # PruneVid runs one prompt at a time
    length = single["input_ids"].shape[1]
    plain = recorded_positions(model, lambda: generate(model, single, new_tokens=3))
    seen = {}
    for rule in ("published", "original"):
        with method_class(name)(positions=rule).make_hooks(model) as hooks:
            seen[rule] = recorded_positions(model, lambda: generate(model, single, new_tokens=3))
        shortened = hooks.stats[0].prompt_tokens_after
        assert shortened < length
    assert seen["published"][0][0, -1] == shortened - 1  # renumbered: the last token is the shorter prompt's last
    assert seen["published"][1][0, -1] == shortened
    assert seen["original"][0][0, -1] == plain[0][0, -1] == length - 1  # the whole prompt's numbering
    for step in (1, 2):
        assert torch.equal(seen["original"][step], plain[step])


def test_only_the_prompt_shortening_methods_take_a_position_rule_and_it_is_checked():
    for name in ("fastv", "framefusion"):  # they drop tokens inside the LLM: kept tokens keep their positions
        assert "positions" not in method_class(name)().settings()
    with pytest.raises(ValueError, match=r"`positions` must be one of \['published', 'original'\], got 'kept'"):
        method_class("visionzip")(positions="kept")
