"""The floors against their definitions (brute-force loops), and their wiring on every family: the LLM receives
exactly the kept tokens' features, with their original multimodal RoPE ids, in a left-padded batch of two."""

import pytest
import torch
from compression_fakes import video_token_id
from reference_llm import capture_text_inputs

from lightning_prune.compression.base import VisualContext
from lightning_prune.compression.floors import (
    RandomTokensMethod,
    UniformSpatialMethod,
    UniformTemporalMethod,
    evenly_spaced,
)
from lightning_prune.compression.hooks import CompressionHooks
from lightning_prune.dycoke.families.base import VideoTokens


def _video(frames=6, per_frame=10, trailing=1, batch=2):
    return VideoTokens([torch.randn(frames, per_frame, 4) for _ in range(batch)], trailing, None)


def _context(seed=0):
    return VisualContext(None, None, {}, torch.Generator().manual_seed(seed))


def test_evenly_spaced_is_floor_of_i_total_over_count():
    for total in (1, 7, 16, 196):
        for count in range(1, total + 1):
            assert evenly_spaced(total, count).tolist() == [i * total // count for i in range(count)]


@pytest.mark.parametrize("ratio", [0.35, 0.25, 0.15, 1.0])
def test_uniform_spatial_keeps_the_same_evenly_spaced_tokens_of_every_frame(ratio):
    video = _video()
    kept = UniformSpatialMethod(keep_ratio=ratio).select_visual(video, _context()).kept
    count = max(1, int(10 * ratio))
    expected = [f * 10 + i * 10 // count for f in range(6) for i in range(count)] + [60]
    assert all(index.tolist() == expected for index in kept)


@pytest.mark.parametrize("ratio", [0.35, 0.25, 0.15, 1.0])
def test_uniform_temporal_keeps_every_token_of_evenly_spaced_frames(ratio):
    video = _video()
    kept = UniformTemporalMethod(keep_ratio=ratio).select_visual(video, _context()).kept
    frames = [j * 6 // max(1, int(6 * ratio)) for j in range(max(1, int(6 * ratio)))]
    expected = [f * 10 + i for f in frames for i in range(10)] + [60]
    assert all(index.tolist() == expected for index in kept)


def test_random_tokens_draw_without_replacement_seeded_and_per_sample():
    video = _video()
    method = RandomTokensMethod(keep_ratio=0.25, seed=3)
    first = method.select_visual(video, _context(3)).kept
    again = method.select_visual(video, _context(3)).kept
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1])  # each sample draws its own
    generator = torch.Generator().manual_seed(3)
    for index in first:
        expected = torch.randperm(60, generator=generator)[:15].sort().values.tolist() + [60]
        assert index.tolist() == expected


@pytest.mark.parametrize("method", [UniformSpatialMethod(keep_ratio=0.25), UniformTemporalMethod(keep_ratio=0.5),
                                    RandomTokensMethod(keep_ratio=0.3)], ids=lambda method: method.name)
def test_the_llm_receives_exactly_the_kept_tokens_with_their_positions(family_model, method):
    adapter, model, inputs = family_model
    plain = capture_text_inputs(model, inputs, 1)[0]
    with CompressionHooks(model, method):
        hooked = capture_text_inputs(model, inputs, 1)[0]
    video_id = video_token_id(model)
    is_video = inputs["input_ids"] == video_id
    video_length = int(is_video[0].sum())
    trailing = getattr(adapter, "trailing", 0)
    frames = 8 // adapter.frames_per_step
    per_frame = (video_length - trailing) // frames
    fake = VideoTokens([torch.zeros(frames, per_frame, 1)] * 2, trailing, None)
    kept = method.select_visual(fake, _context(method.settings().get("seed", 0))).kept
    for sample in range(2):
        video_columns = is_video[sample].nonzero()[:, 0]
        columns = sorted((~is_video[sample]).nonzero()[:, 0].tolist() + video_columns[kept[sample]].tolist())
        assert hooked["inputs_embeds"].shape[1] == len(columns)
        torch.testing.assert_close(hooked["inputs_embeds"][sample], plain["inputs_embeds"][sample, columns])
        positions = hooked["position_ids"]
        if positions.dim() == 3:  # multimodal RoPE: the (t, h, w) rows keep the original ids
            assert torch.equal(positions[-3:, sample], plain["position_ids"][-3:, sample, columns])
