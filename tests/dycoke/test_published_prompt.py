"""`prompt: published`: the published evaluation's qwen_1_5 conversation, token for token, and where it is refused."""

import pytest
import torch
from published_reference import IMAGE_TOKEN_INDEX, published_qwen_1_5_prompt, published_tokenizer_image_token

from lightning_prune.callbacks import DyCoke
from lightning_prune.modules.video_llm import VideoLLM

CONTEXT = ("Which shape crosses the frame first?\nA. red square\nB. blue circle\n"
           "Answer with the option's letter from the given choices directly.")


def _batch(frames: int = 4) -> dict:
    video = torch.randint(0, 256, (frames, 28, 28, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return {"videos": [video], "question": [CONTEXT], "options": [[]], "id": ["a"]}


def _collapsed(input_ids: torch.Tensor, video_token_id: int) -> list[int]:
    """The prompt's ids with the run of video tokens collapsed to the published image placeholder."""
    ids, previous = [], None
    for token in input_ids.tolist():
        if token == video_token_id:
            if previous != video_token_id:
                ids.append(IMAGE_TOKEN_INDEX)
        else:
            ids.append(token)
        previous = token
    return ids


@pytest.fixture(scope="module")
def published_module():
    # lmms-eval hands the whole context over: the bridge's template is "{question}" (see evaluation/model_args.py).
    return VideoLLM(tiny_config=True, prompt="published", prompt_template="{question}", max_new_tokens=2)


def test_published_prompt_token_ids_equal_the_published_conversation(published_module):
    inputs = published_module.model_inputs(_batch())
    tokenizer = published_module.processor.tokenizer
    expected = published_tokenizer_image_token(published_qwen_1_5_prompt(CONTEXT), tokenizer)
    video_token_id = published_module.model.config.video_token_id
    assert _collapsed(inputs["input_ids"][0], video_token_id) == expected
    assert int((inputs["input_ids"][0] == video_token_id).sum()) == 4 * 16 + 1  # the processor expanded the video
    # The Hugging Face chat template differs (no system turn), which is why the option exists.
    chat = VideoLLM(tiny_config=True, prompt_template="{question}").model_inputs(_batch())
    assert _collapsed(chat["input_ids"][0], video_token_id) != expected


def test_published_prompt_generates_an_answer_with_dycoke(published_module):
    callback = DyCoke(merging_ratio=0.5, prune_layer=2, carry_state_across_samples=True)
    callback._install(published_module)
    try:
        answers = published_module.predict_step(_batch(8), 0)
    finally:
        callback._remove()
    (stats,) = callback._hooks.pop_stats()
    assert [answer["id"] for answer in answers] == ["a"]
    assert stats.visual_tokens_before == 8 * 16 + 1 and stats.visual_tokens_after < stats.visual_tokens_before
    assert callback._hooks.pruning.carried_attention is not None  # carried over to the next sample


@pytest.mark.parametrize("family", ["llava_next_video", "qwen2_5_vl", "qwen3_vl", "internvl"])
def test_published_prompt_is_refused_for_families_without_published_code(family):
    with pytest.raises(ValueError, match=r"`prompt` 'published' exists only for families with published DyCoke code "
                                         rf"\['llava_onevision'\], got family '{family}'; use prompt 'chat_template'"):
        VideoLLM(tiny_config=True, family=family, prompt="published")


def test_prompt_outside_the_list_is_refused():
    with pytest.raises(ValueError, match=r"`prompt` must be one of \['chat_template', 'published'\], got 'qwen'"):
        VideoLLM(tiny_config=True, prompt="qwen")
