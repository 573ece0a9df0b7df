"""Qwen-VL families: after merging, kept video tokens keep their original (t, h, w) RoPE ids, the text after the video
keeps its original ids, decoding continues the original numbering; frame counts must fill Qwen's temporal patches."""

import numpy as np
import pytest
import torch
from _support.video_positions import recorded_positions
from dycoke_fakes import generate

from lightning_prune.dycoke import ttm_keep_positions
from lightning_prune.dycoke.families import FAMILY_NAMES, get_family
from lightning_prune.dycoke.families.mrope import MultimodalRopeAdapter
from lightning_prune.dycoke.hooks import DyCokeHooks, DyCokeSettings

MROPE_FAMILIES = [name for name in FAMILY_NAMES if isinstance(get_family(name), MultimodalRopeAdapter)]


def _inputs(adapter, processor, frames=8):
    rng = np.random.default_rng(1)
    videos = [rng.integers(0, 256, (frames, 32, 32, 3), dtype=np.uint8) for _ in range(2)]
    prompts = [processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}],
        add_generation_prompt=True) for question in ["Where?", "Which shape crosses first?"]]
    processor.tokenizer.padding_side = "left"
    return dict(processor(text=prompts, videos=videos, return_tensors="pt", padding=True,
                          **adapter.processor_kwargs(videos)))


def _recorded_positions(model, inputs, hooks=None):
    """The (t, h, w) position ids the text model gets at the prefill and at each decode step."""
    def run():
        if hooks is None:
            generate(model, inputs, new_tokens=3)
        else:
            with hooks:
                generate(model, inputs, new_tokens=3)
    return [positions[-3:] for positions in recorded_positions(model, run)]


@pytest.mark.parametrize("family", MROPE_FAMILIES)
@pytest.mark.parametrize("variant", ["official", "refined"])
def test_mrope_kept_tokens_and_text_keep_their_original_positions(family, variant):
    adapter = get_family(family)
    model, processor = adapter.tiny_model({}, seed=0)
    inputs = _inputs(adapter, processor)
    plain = _recorded_positions(model, inputs)
    hooks = DyCokeHooks(model, DyCokeSettings(merging_ratio=0.5, decode_prune_ratio=0.5, variant=variant))
    merged = _recorded_positions(model, inputs, hooks)
    features = model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"],
                                              return_dict=True).pooler_output
    ids, video_id = inputs["input_ids"], model.config.video_token_id
    for b in range(2):
        video_columns = (ids[b] == video_id).nonzero().flatten()
        kept = ttm_keep_positions(features[b].view(4, 16, -1), 0.5, variant=variant)
        expected_video = plain[0][:, b, video_columns[kept]]
        after = torch.arange(int(video_columns[-1]) + 1, ids.shape[1])  # the text after the video
        removed = len(video_columns) - len(kept)
        merged_video = merged[0][:, b, : ids.shape[1] - removed][:, ids[b][_kept_mask(ids[b], video_columns, kept)]
                                                                 == video_id]
        assert torch.equal(merged_video, expected_video)  # same ids, in the merged order
        assert torch.equal(merged[0][:, b, after - removed], plain[0][:, b, after])
    for step in (1, 2):  # decode steps continue the original numbering
        assert torch.equal(merged[step], plain[step])


def _kept_mask(row_ids, video_columns, kept):
    keep = torch.ones(len(row_ids), dtype=torch.bool)
    keep[video_columns] = False
    keep[video_columns[kept]] = True
    return keep


@pytest.mark.parametrize("family", MROPE_FAMILIES)
def test_mrope_frame_count_must_fill_the_temporal_patches(family):
    with pytest.raises(ValueError, match=rf"`num_frames` must be a multiple of {family}'s temporal patch \(2 input "
                                         r"frames make one frame of tokens\), got 7"):
        get_family(family).check_frames(7)
