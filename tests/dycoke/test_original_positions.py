"""DyCoke's `positions: original`: kept tokens keep their positions in the whole prompt, decoding counts the whole
prompt. Checked against an independent computation: the model without DyCoke, with the merged video tokens masked out
of attention instead of dropped (same position ids), must give the same logits at the prefill and every decode step."""

import pytest
import torch
from _support.video_families import padded_family_batch
from _support.video_positions import greedy_steps, recorded_positions
from dycoke_fakes import generate

from lightning_prune.dycoke import ttm_keep_positions
from lightning_prune.dycoke.families import FAMILY_NAMES, get_family
from lightning_prune.dycoke.families.mrope import MultimodalRopeAdapter
from lightning_prune.dycoke.hooks import DyCokeHooks, DyCokeSettings

ONE_D_FAMILIES = [name for name in FAMILY_NAMES if not isinstance(get_family(name), MultimodalRopeAdapter)
                  and name.startswith("llava")]
MROPE_FAMILIES = [name for name in FAMILY_NAMES if isinstance(get_family(name), MultimodalRopeAdapter)]
K = 0.5


def _merged_away(adapter, model, inputs: dict) -> torch.Tensor:
    """`[B, S]` True at the video tokens that merging (K, variant `refined`: kept in column order) drops."""
    with torch.inference_mode():
        video = adapter.encode_video(model.model, dict(inputs))
    dropped = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
    video_id = model.config.video_token_id
    for b, frames in enumerate(video.frames):
        columns = (inputs["input_ids"][b] == video_id).nonzero().flatten()
        kept = ttm_keep_positions(frames, K, variant="refined")
        kept = torch.cat([kept, torch.arange(video.length - video.trailing, video.length)])  # e.g. the newline
        gone = torch.ones(len(columns), dtype=torch.bool)
        gone[kept] = False
        dropped[b, columns[gone]] = True
    return dropped


def _mask_without_merged_tokens(adapter, model, inputs: dict) -> torch.Tensor:
    return inputs["attention_mask"].masked_fill(_merged_away(adapter, model, inputs), 0)


@pytest.mark.parametrize("family", ONE_D_FAMILIES)
def test_original_positions_equal_masking_out_the_merged_tokens(family):
    adapter, model, inputs = padded_family_batch(family)
    reference = greedy_steps(model, inputs, _mask_without_merged_tokens(adapter, model, inputs))
    settings = DyCokeSettings(merging_ratio=K, decode_prune_ratio=0.0, variant="refined", window=4,
                              positions="original")
    with DyCokeHooks(model, settings) as hooks:
        merged = greedy_steps(model, inputs, inputs["attention_mask"])
    assert hooks.stats[0].prompt_tokens_after < hooks.stats[0].prompt_tokens_before  # merging did shorten it
    for step, (got, want) in enumerate(zip(merged, reference, strict=True)):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=f"step {step}")


@pytest.mark.parametrize("family", ONE_D_FAMILIES)
def test_published_positions_differ_from_masking_out(family):
    """The published renumbering is a different model input: the check above can fail."""
    adapter, model, inputs = padded_family_batch(family)
    reference = greedy_steps(model, inputs, _mask_without_merged_tokens(adapter, model, inputs))
    settings = DyCokeSettings(merging_ratio=K, decode_prune_ratio=0.0, variant="refined", window=4)
    with DyCokeHooks(model, settings):
        merged = greedy_steps(model, inputs, inputs["attention_mask"])
    assert not torch.allclose(merged[0], reference[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", MROPE_FAMILIES)
def test_mrope_original_positions_keep_every_row(family):
    """Qwen-VL: the (t, h, w) rows are original under both rules; `original` keeps generate's 1-D text row too."""
    adapter, model, inputs = padded_family_batch(family)
    plain = recorded_positions(model, lambda: generate(model, inputs, new_tokens=3))
    settings = DyCokeSettings(merging_ratio=K, decode_prune_ratio=0.0, variant="refined", positions="original")
    with DyCokeHooks(model, settings):
        merged = recorded_positions(model, lambda: generate(model, inputs, new_tokens=3))
    kept = ~_merged_away(adapter, model, inputs)
    kept_columns = kept.nonzero()[:, 1].view(kept.shape[0], -1)  # refined: the kept tokens in column order
    assert kept_columns.shape[1] < inputs["input_ids"].shape[1]
    expected = plain[0].gather(-1, kept_columns[None].expand(plain[0].shape[0], -1, -1))
    assert torch.equal(merged[0], expected)
    for step in (1, 2):
        assert torch.equal(merged[step], plain[step])


def test_positions_must_be_a_known_rule():
    with pytest.raises(ValueError, match=r"`positions` must be one of \['published', 'original'\], got 'kept'"):
        DyCokeSettings(positions="kept")
