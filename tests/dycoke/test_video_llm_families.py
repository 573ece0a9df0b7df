"""`VideoLLM` across families: the tiny model of each, the frame check before any compute, clear errors."""

import pytest
import torch

from lightning_prune.dycoke.families import FAMILY_NAMES, family_for_model_type
from lightning_prune.modules.video_llm import VideoLLM


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_video_llm_builds_each_family_and_answers(family):
    module = VideoLLM(tiny_config=True, family=family, max_new_tokens=2)
    assert module.family.name == family
    assert family_for_model_type(module.model.config.model_type).name == family
    videos = [torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)]
    batch = {"videos": videos, "question": ["What moves?"], "options": [["left", "right"]], "id": ["a"]}
    answers = module.predict_step(batch, 0)
    assert [answer["id"] for answer in answers] == ["a"] and isinstance(answers[0]["answer"], str)


def test_video_llm_refuses_an_odd_frame_count_for_qwen_before_any_compute():
    module = VideoLLM(tiny_config=True, family="qwen2_5_vl")
    batch = {"videos": [torch.zeros(7, 32, 32, 3, dtype=torch.uint8)], "question": ["?"], "options": [["a", "b"]]}
    with pytest.raises(ValueError, match=r"`num_frames` must be a multiple of qwen2_5_vl's temporal patch .*got 7"):
        module.model_inputs(batch)


def test_video_llm_rejects_an_unknown_family():
    with pytest.raises(ValueError, match=r"`family` must be one of \['llava_onevision', 'llava_next_video', "
                                         r"'qwen2_5_vl', 'qwen3_vl', 'internvl'\], got 'gemma3'"):
        VideoLLM(tiny_config=True, family="gemma3")


def test_family_for_model_type_lists_the_supported_families():
    with pytest.raises(ValueError, match=r"no family adapter for model_type 'gemma3'; supported families: \["):
        family_for_model_type("gemma3")
