"""`LayoutAugmentation`: the training-time draws, visual tokens dropped before the LLM, visual keys hidden from the
answer tokens (checked against the model's own 4-D attention-mask path) and frame positions shuffled (checked against
the model given those positions); `VideoLLM`'s `patch_position_loss` against a cross-entropy by hand."""

import re

import pytest
import torch
import torch.nn.functional as F
from _support.synthetic_batches import synthetic_batch

from lightning_prune.modules.video_augment import AugmentedForward, LayoutAugmentation
from lightning_prune.modules.video_llm import VideoLLM

TINY_WORDS = {"tokenizer": "words", "text_config": {"num_hidden_layers": 2}}
ANSWER_TOKENS = 4  # "Answer", ":", letter, "<|im_end|>"


@pytest.fixture(scope="module")
def module():
    return VideoLLM(tiny_config=TINY_WORDS, family="llava_onevision", answer_prefix="Answer: ")


def _batch(count=2, frames=8):
    return synthetic_batch(9, range(count), frames=frames)


def _step_with(augmentation, dropout_above):
    return next(step for step in range(1000) if augmentation.for_step(step)[1] > dropout_above)


def test_draws_are_seeded_in_range_and_follow_the_probability():
    augmentation = LayoutAugmentation(visual_keep_min=0.4, answer_visual_dropout=0.8, probability=0.5, seed=3)
    draws = [augmentation.for_step(step)[:2] for step in range(400)]
    assert draws == [augmentation.for_step(step)[:2] for step in range(400)]
    keeps = [keep for keep, _ in draws if keep < 1.0]
    dropouts = [rate for _, rate in draws if rate > 0.0]
    assert all(0.4 <= keep < 1.0 for keep in keeps) and all(0.0 < rate <= 0.8 for rate in dropouts)
    assert 150 < len(keeps) < 250 and 150 < len(dropouts) < 250  # about half the steps each
    assert draws != [LayoutAugmentation(0.4, 0.8, probability=0.5, seed=4).for_step(step)[:2] for step in range(400)]
    assert not LayoutAugmentation().enabled() and not LayoutAugmentation(0.5, probability=0.0).enabled()
    late = LayoutAugmentation(0.5, start_epoch=3)
    assert [late.enabled(epoch) for epoch in range(5)] == [False, False, False, True, True]
    assert {LayoutAugmentation(0.5, 0.5, probability=0.0).for_step(step)[:2] for step in range(50)} == {(1.0, 0.0)}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"visual_keep_min": 0.0}, "`visual_keep_min` must be in (0, 1], got 0.0"),
    ({"answer_visual_dropout": 1.0}, "`answer_visual_dropout` must be in [0, 1), got 1.0"),
    ({"dropout_from_layer": -1}, "`dropout_from_layer` must be an int >= 0, got -1"),
    ({"probability": 1.5}, "`probability` must be in [0, 1], got 1.5"),
    ({"start_epoch": -2}, "`start_epoch` must be an int >= 0, got -2"),
    ({"position_shuffle": -0.1}, "`position_shuffle` must be in [0, 1], got -0.1"),
])
def test_bad_values_are_one_message_each(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        LayoutAugmentation(**kwargs)


def test_video_llm_refuses_an_augmentation_of_another_type():
    with pytest.raises(ValueError, match="`augmentation` must be a LayoutAugmentation or None, got dict"):
        VideoLLM(tiny_config=TINY_WORDS, augmentation={"visual_keep_min": 0.5})


def test_hidden_visual_keys_match_the_models_own_4d_mask(module):
    inputs, _ = module.training_inputs(_batch())
    augmentation = LayoutAugmentation(answer_visual_dropout=0.9, dropout_from_layer=0, probability=1.0)
    step = _step_with(augmentation, dropout_above=0.5)
    video = module.model.config.video_token_id
    with torch.no_grad():
        plain = module.model(**inputs, use_cache=False).logits
        with AugmentedForward(module.model, "llava_onevision", augmentation, step, ANSWER_TOKENS) as forward:
            ours = module.model(**inputs, use_cache=False).logits
        hidden = forward._hidden
        # Independent: the causal, padding-aware boolean mask with the answer rows cut off from the hidden columns,
        # handed to the model as a 4-D mask (transformers then uses it in every layer as given).
        batch, length = inputs["input_ids"].shape
        mask = torch.ones(length, length, dtype=torch.bool).tril().expand(batch, 1, length, length).clone()
        mask &= inputs["attention_mask"].bool()[:, None, None, :]
        rows = torch.zeros(length, dtype=torch.bool)
        rows[-ANSWER_TOKENS:] = True
        mask &= ~(rows[None, None, :, None] & hidden[:, None, None, :])
        reference = module.model(**{**inputs, "attention_mask": mask}, use_cache=False).logits
    visual = inputs["input_ids"] == video
    assert bool((hidden <= visual).all()) and int(hidden.sum()) > visual.sum() // 4
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(ours[real], reference[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[:, :-ANSWER_TOKENS], plain[:, :-ANSWER_TOKENS])  # the prompt is untouched
    assert not torch.allclose(ours[:, -ANSWER_TOKENS:], plain[:, -ANSWER_TOKENS:], atol=1e-4)


def test_hiding_from_a_layer_past_the_last_changes_nothing_and_hooks_come_off(module):
    inputs, _ = module.training_inputs(_batch())
    layers = module.model.config.text_config.num_hidden_layers
    augmentation = LayoutAugmentation(answer_visual_dropout=0.9, dropout_from_layer=layers, probability=1.0)
    step = _step_with(augmentation, dropout_above=0.5)
    with torch.no_grad():
        plain = module.model(**inputs, use_cache=False).logits
        with AugmentedForward(module.model, "llava_onevision", augmentation, step, ANSWER_TOKENS):
            late = module.model(**inputs, use_cache=False).logits
        after = module.model(**inputs, use_cache=False).logits
    torch.testing.assert_close(late, plain)
    torch.testing.assert_close(after, plain)


def test_dropped_visual_tokens_shorten_the_prompt_and_the_loss_stays_on_the_answer(module):
    batch = _batch()
    inputs, _ = module.training_inputs(batch)
    # a seed whose step 0 (a module without a trainer is at global step 0) drops about half the frame tokens
    augmentation = next(LayoutAugmentation(visual_keep_min=0.3, probability=1.0, seed=seed) for seed in range(100)
                        if LayoutAugmentation(0.3, probability=1.0, seed=seed).for_step(0)[0] < 0.7)
    keep = augmentation.for_step(0)[0]
    trained = VideoLLM(tiny_config=TINY_WORDS, family="llava_onevision", answer_prefix="Answer: ",
                       augmentation=augmentation)
    trained.model.load_state_dict(module.model.state_dict())
    with torch.no_grad():
        loss = trained.training_step(batch, 0)
        with AugmentedForward(trained.model, "llava_onevision", augmentation, 0, ANSWER_TOKENS):
            logits = trained.model(**inputs, use_cache=False).logits
        full = module.model(**inputs, use_cache=False).logits
    frame_tokens = 8 * 16  # 8 frames of 16 tokens; the newline after them is always kept
    assert logits.shape[1] == inputs["input_ids"].shape[1] - (frame_tokens - int(frame_tokens * keep))
    # by hand: the last 5 positions predict the 4 answer tokens, which end every row
    expected = torch.stack([F.cross_entropy(logits[row, -5:-1], inputs["input_ids"][row, -4:])
                            for row in range(len(logits))]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert not torch.allclose(full[:, -ANSWER_TOKENS:], logits[:, -ANSWER_TOKENS:], atol=1e-4)


def test_position_shuffle_draws_follow_its_probability_and_leave_the_other_draws_alone():
    shuffled = LayoutAugmentation(visual_keep_min=0.4, answer_visual_dropout=0.8, position_shuffle=0.3, seed=3)
    plain = LayoutAugmentation(visual_keep_min=0.4, answer_visual_dropout=0.8, seed=3)
    draws = [shuffled.for_step(step) for step in range(600)]
    assert [draw[:2] for draw in draws] == [plain.for_step(step)[:2] for step in range(600)]
    assert 140 < sum(draw[2] for draw in draws) < 220  # about 30% of 600
    assert not any(plain.for_step(step)[2] for step in range(600))
    # a setting without the knob draws from its generator exactly what it drew before the knob existed
    assert torch.equal(plain.for_step(7)[3].get_state(), _four_draws(plain.step_seed(7)).get_state())
    assert LayoutAugmentation(position_shuffle=0.5).enabled() and not LayoutAugmentation(position_shuffle=0.0).enabled()


def _four_draws(seed):
    generator = torch.Generator().manual_seed(seed)
    torch.rand(4, generator=generator)
    return generator


def test_shuffled_positions_permute_each_frame_and_are_what_the_model_runs_with(module):
    batch = _batch()
    inputs, _ = module.training_inputs(batch)
    augmentation = LayoutAugmentation(position_shuffle=1.0)
    base = module.model.model
    seen = []
    handle = base.language_model.register_forward_hook(  # after the forward: the kwargs the pre-hooks made
        lambda _, args, kwargs, output: seen.append(kwargs["position_ids"]), with_kwargs=True)
    try:
        with torch.no_grad(), AugmentedForward(module.model, "llava_onevision", augmentation, 0, ANSWER_TOKENS):
            logits = module.model(**inputs, use_cache=False).logits
    finally:
        handle.remove()
    positions = seen[0]
    length = inputs["input_ids"].shape[1]
    visual = inputs["input_ids"] == base.config.video_token_id
    for row in range(len(positions)):
        columns = visual[row].nonzero().squeeze(1)
        assert len(columns) == 8 * 16 + 1  # 8 frames of 16 tokens and the newline
        for start in range(0, 8 * 16, 16):  # each frame: its own columns' positions, in another order
            frame = columns[start:start + 16]
            assert sorted(positions[row, frame].tolist()) == frame.tolist()
        assert positions[row, ~visual[row]].tolist() == torch.arange(length)[~visual[row]].tolist()
        assert positions[row, columns[:-1]].tolist() != columns[:-1].tolist()
    with torch.no_grad():
        given = module.model(**inputs, position_ids=positions, use_cache=False).logits
        plain = module.model(**inputs, use_cache=False).logits
    torch.testing.assert_close(logits, given)
    assert not torch.allclose(logits[:, -ANSWER_TOKENS:], plain[:, -ANSWER_TOKENS:], atol=1e-4)


def test_patch_position_loss_is_a_cross_entropy_on_the_frame_tokens_and_changes_no_logit(module):
    batch = _batch()
    trained = VideoLLM(tiny_config=TINY_WORDS, family="llava_onevision", answer_prefix="Answer: ",
                       patch_position_loss=0.25)
    trained.model.load_state_dict(module.model.state_dict())
    inputs, labels = trained.training_inputs(batch)
    with torch.no_grad():
        encoded, position_loss = trained.with_patch_position_loss(inputs)
        torch.testing.assert_close(trained.model(**encoded, use_cache=False).logits,
                                   module.model(**inputs, use_cache=False).logits)
        # by hand: the model's own video features, 8 frames of 16 tokens (and the newline) per sample
        features = module.model.model.get_video_features(
            pixel_values_videos=inputs["pixel_values_videos"], vision_feature_layer=-1,
            vision_feature_select_strategy="full", return_dict=True).pooler_output
        tokens = features[:, :128].reshape(-1, 16, features.shape[-1])
        head = trained.patch_position_head
        expected = F.cross_entropy((tokens @ head.weight.T + head.bias).reshape(-1, 16), torch.arange(16).repeat(
            len(tokens)))
        assert position_loss.item() == pytest.approx(expected.item(), rel=1e-5)
        answer_loss = module.training_step(batch, 0)
        assert trained.training_step(batch, 0).item() == pytest.approx(
            answer_loss.item() + 0.25 * expected.item(), rel=1e-5)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"patch_position_loss": -1.0}, "`patch_position_loss` must be a number >= 0, got -1.0"),
    ({"patch_position_loss": 0.1, "family": "qwen2_5_vl"},
     "`patch_position_loss` needs a fixed number of tokens per frame; qwen2_5_vl's comes from each video's size"),
    ({"augmentation": LayoutAugmentation(position_shuffle=0.5), "family": "qwen2_5_vl"},
     "`augmentation.position_shuffle` needs a fixed number of tokens per frame; qwen2_5_vl's"),
])
def test_layout_knobs_refused_where_they_cannot_work(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        VideoLLM(tiny_config=TINY_WORDS, **{"family": "llava_onevision", **kwargs})
