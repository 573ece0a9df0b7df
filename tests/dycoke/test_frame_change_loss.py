"""`VideoLLM(frame_change_loss=...)`: labels against the pixels cell by cell and against the generator's colour
changes, the loss against a binary cross-entropy by hand on the model's own hidden states, and the refusals."""

import re

import numpy as np
import pytest
import torch
from _support.synthetic_batches import synthetic_batch

from lightning_prune.data.synthetic_video import make_sample
from lightning_prune.modules.video_augment import LayoutAugmentation
from lightning_prune.modules.video_llm import VideoLLM

TINY_WORDS = {"tokenizer": "words", "text_config": {"num_hidden_layers": 2}}
FRAMES, SIDE = 8, 4  # LLaVA-OV's tiny tower: 28x28 frames, 7x7 patches pooled to 4x4 tokens


@pytest.fixture(scope="module")
def module():
    return VideoLLM(tiny_config=TINY_WORDS, family="llava_onevision", answer_prefix="Answer: ", frame_change_loss=0.5,
                    frame_change_layer=1)


def test_labels_are_the_changed_cells_of_the_processed_frames(module):
    batch = synthetic_batch(9, [1, 4, 9], frames=FRAMES)  # motion, counting, counting
    inputs, _ = module.training_inputs(batch)
    labels = module.frame_change_targets(inputs)
    pixels = inputs["pixel_values_videos"]  # [B, F, 3, 28, 28]
    cell = pixels.shape[-1] // SIDE
    expected = torch.zeros(len(pixels), FRAMES - 1, SIDE * SIDE, dtype=torch.bool)
    for row in range(len(pixels)):
        for frame in range(1, FRAMES):
            for index in range(SIDE * SIDE):
                top, left = (index // SIDE) * cell, (index % SIDE) * cell
                before = pixels[row, frame - 1, :, top:top + cell, left:left + cell]
                now = pixels[row, frame, :, top:top + cell, left:left + cell]
                expected[row, frame - 1, index] = bool(((now - before).abs() > 0.05).any())
    assert torch.equal(labels, expected)
    for row, index in enumerate([1, 4, 9]):
        video, record = make_sample(9, index, frames=FRAMES)
        changed_frames = [t for t in range(1, FRAMES) if not np.array_equal(video[t], video[t - 1])]
        assert sorted(set(labels[row].any(1).nonzero().squeeze(1).add(1).tolist())) == changed_frames
        if record["kind"] == "counting":  # one frame with changed cells per colour change
            assert len(changed_frames) == "ABCD".index(record["answer"])
    assert labels[0].any(1).sum() >= 5  # the moving square changes cells in most frames


def test_loss_is_a_binary_cross_entropy_on_the_hidden_states_of_the_frame_tokens(module):
    batch = synthetic_batch(9, [3, 4], frames=FRAMES)
    plain = VideoLLM(tiny_config=TINY_WORDS, family="llava_onevision", answer_prefix="Answer: ")
    plain.model.load_state_dict(module.model.state_dict())
    inputs, _ = module.training_inputs(batch)
    with torch.no_grad():
        hidden = module.model(**inputs, use_cache=False, output_hidden_states=True).hidden_states[1]
        video_id = module.model.config.video_token_id
        head = module.frame_change_head
        total = 0.0
        count = 0
        labels = module.frame_change_targets(inputs)
        for row in range(len(hidden)):
            places = (inputs["input_ids"][row] == video_id).nonzero().squeeze(1)
            assert len(places) == FRAMES * SIDE * SIDE + 1  # the frame tokens, then the newline token
            for frame in range(1, FRAMES):
                for index in range(SIDE * SIDE):
                    state = hidden[row, places[frame * SIDE * SIDE + index]]
                    probability = torch.sigmoid(state @ head.weight[0] + head.bias[0])
                    target = float(labels[row, frame - 1, index])
                    total -= target * torch.log(probability) + (1 - target) * torch.log(1 - probability)
                    count += 1
        expected = float(total) / count
        answer_loss = plain.training_step(batch, 0).item()
        assert module.training_step(batch, 0).item() == pytest.approx(answer_loss + 0.5 * expected, rel=1e-5)


def test_batches_whose_visual_tokens_were_dropped_get_no_change_loss():
    augmentation = LayoutAugmentation(visual_keep_min=0.5, probability=1.0, seed=1)
    dropped = VideoLLM(tiny_config=TINY_WORDS, family="llava_onevision", answer_prefix="Answer: ",
                       frame_change_loss=0.5, augmentation=augmentation)
    plain = VideoLLM(tiny_config=TINY_WORDS, family="llava_onevision", answer_prefix="Answer: ",
                     augmentation=augmentation)
    plain.model.load_state_dict(dropped.model.state_dict())
    batch = synthetic_batch(9, [0, 4], frames=FRAMES)
    assert augmentation.for_step(0)[0] < 1.0  # step 0 drops visual tokens
    with torch.no_grad():
        assert dropped.training_step(batch, 0).item() == pytest.approx(plain.training_step(batch, 0).item(),
                                                                       rel=1e-6)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"frame_change_loss": -0.5}, "`frame_change_loss` must be a number >= 0, got -0.5"),
    ({"frame_change_loss": 0.1, "frame_change_layer": 0},
     "`frame_change_layer` must be an LLM layer number >= 1, got 0"),
    ({"frame_change_loss": 0.1, "frame_change_layer": 3},
     "`frame_change_layer` must be at most the LLM's 2 layers, got 3"),
    ({"frame_change_loss": 0.1, "family": "qwen2_5_vl"},
     "`frame_change_loss` needs a fixed number of tokens per frame; qwen2_5_vl's comes from each video's size"),
])
def test_frame_change_knobs_refused_where_they_cannot_work(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        VideoLLM(tiny_config=TINY_WORDS, **{"family": "llava_onevision", **kwargs})
