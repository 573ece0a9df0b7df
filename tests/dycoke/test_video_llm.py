"""`VideoLLM` on the tiny random LLaVA-OneVision: prompts, generated answers, multiple-choice accuracy."""

import lightning as L
import pytest
import torch

from lightning_prune.data.video_qa import VideoQADataModule
from lightning_prune.modules.video_llm import VideoLLM


@pytest.fixture(scope="module")
def video_llm():
    return VideoLLM(tiny_config=True, max_new_tokens=5)


@pytest.fixture
def synthetic_data(tmp_path):
    data = VideoQADataModule(generate_synthetic=True, synthetic_dir=str(tmp_path), num_frames=8, batch_size=2,
                             synthetic_samples=4, synthetic_video_frames=8, synthetic_frame_size=32)
    data.prepare_data()
    data.setup("test")
    return data


def test_video_llm_prompts_hold_question_options_and_the_expanded_video(video_llm, synthetic_data):
    batch = next(iter(synthetic_data.test_dataloader()))
    prompt = video_llm.prompts(batch)[0]
    assert "Which way does the red square move?\nA. left\nB. right\nC. up\nD. down\n" in prompt
    inputs = video_llm.model_inputs(batch)
    video_tokens = (inputs["input_ids"] == video_llm.model.config.video_token_id).sum(dim=1)
    assert video_tokens.tolist() == [8 * 16 + 1] * 2
    assert inputs["pixel_values_videos"].shape == (2, 8, 3, 28, 28)


def test_video_llm_predict_step_decodes_the_greedy_generation(video_llm, synthetic_data):
    batch = next(iter(synthetic_data.test_dataloader()))
    answers = video_llm.predict_step(batch, 0)
    inputs = video_llm.model_inputs(batch)
    with torch.inference_mode():
        generated = video_llm.model.generate(**inputs, max_new_tokens=5, do_sample=False)
    tokenizer = video_llm.processor.tokenizer
    expected = [tokenizer.decode(row[inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
                for row in generated]
    assert [a["answer"] for a in answers] == expected
    assert [a["id"] for a in answers] == batch["id"]


def test_video_llm_test_step_scores_the_option_letters(video_llm, synthetic_data):
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    accuracy = trainer.test(video_llm, synthetic_data, verbose=False)[0]["test/acc"]
    correct = 0
    letter_ids = video_llm.option_token_ids(4)
    for batch in synthetic_data.test_dataloader():
        inputs = video_llm.model_inputs(batch)  # equal prompt lengths: no padding, positions are 0..S-1
        with torch.inference_mode():
            logits = video_llm.model(**inputs).logits[:, -1]
        predicted = logits[:, letter_ids].argmax(dim=1)
        correct += int((predicted == torch.tensor(batch["answer_index"])).sum())
    assert accuracy == pytest.approx(correct / 4)
    assert letter_ids == [video_llm.processor.tokenizer.convert_tokens_to_ids(c) for c in "ABCD"]


def test_video_llm_reports_every_bad_argument_at_once():
    with pytest.raises(ValueError, match=r"exactly one of `model_name_or_path` and `tiny_config`.*`max_new_tokens` "
                                         r"must be >= 1, got 0.*`prompt_template` must contain '\{question\}'"):
        VideoLLM(max_new_tokens=0, prompt_template="no placeholder")
    with pytest.raises(ValueError, match=r"`dtype` must be one of \['auto', 'float32', 'bfloat16', 'float16'\]"):
        VideoLLM(tiny_config=True, dtype="int8")
    with pytest.raises(ValueError, match=r"`attn_implementation` must be 'sdpa' or 'eager', got 'flash'"):
        VideoLLM(tiny_config=True, attn_implementation="flash")


def test_video_llm_tiny_config_overrides_the_defaults():
    module = VideoLLM(tiny_config={"text_config": {"num_hidden_layers": 2}}, attn_implementation="eager")
    text = module.model.config.text_config
    assert text.num_hidden_layers == 2 and text.hidden_size == 64
    assert text._attn_implementation == "eager"
