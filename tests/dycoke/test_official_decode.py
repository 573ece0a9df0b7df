"""`official` DyCoke end to end on the tiny LLaVA-OneVision against the published decode loop, re-implemented here."""

import pytest
import torch
from dycoke_fakes import generate, make_inputs
from published_reference import PublishedCache, PublishedDecodeState, published_ttm
from transformers.modeling_outputs import BaseModelOutputWithPooling

from lightning_prune.dycoke.hooks import DyCokeHooks, DyCokeSettings

TOKENS_PER_FRAME, FRAMES, STEPS = 16, 8, 16


def _published_generation(model, inputs, merging_ratio, prune_layer, ratio, threshold):
    """Greedy tokens of the published pipeline: merged prompt, then a decode loop whose layers >= L attend to the
    cache gathered at the kept indices; layer L - 1's attention comes from an unpruned eager forward over the whole
    sequence (layers < L never see pruning, so it is the attention the published loop reads)."""
    features = model.model.get_video_features(inputs["pixel_values_videos"], return_dict=True).pooler_output[0]
    frame_tokens = features[: FRAMES * TOKENS_PER_FRAME]
    kept = published_ttm(frame_tokens, TOKENS_PER_FRAME, merging_ratio)
    merged = torch.cat([frame_tokens[f * TOKENS_PER_FRAME : (f + 1) * TOKENS_PER_FRAME][index]
                        for f, index in enumerate(kept) if index is not None] + [features[-1:]])
    ids = inputs["input_ids"][0]
    video = (ids == model.config.video_token_id).nonzero().flatten()
    start = int(video[0])
    prompt = torch.cat([ids[:start], ids[video[:1]].expand(len(merged)), ids[int(video[-1]) + 1 :]])[None]
    encoded = {"video": BaseModelOutputWithPooling(pooler_output=merged[None])}
    state = PublishedDecodeState(start, len(merged) - 2, ratio, threshold)  # image_token_length: frames - 1
    cache = PublishedCache(prune_layer, config=model.config.text_config)
    logits = model(input_ids=prompt, mm_encoder_outputs=encoded, cache=cache, use_cache=True).logits[0, -1]
    sequence = torch.cat([prompt[0], logits.argmax()[None]])
    for _ in range(STEPS - 1):
        model.set_attn_implementation({"text_config": "eager"})
        attentions = model(input_ids=sequence[None], mm_encoder_outputs=encoded, output_attentions=True).attentions
        model.set_attn_implementation({"text_config": "sdpa"})
        attention = attentions[prune_layer - 1][0, :, -1].mean(0)
        cache.kv_cache = state.kept_indices(attention, len(sequence))
        logits = model(input_ids=sequence[None, -1:], cache=cache, use_cache=True,
                       position_ids=torch.tensor([[len(sequence) - 1]])).logits[0, -1]
        sequence = torch.cat([sequence, logits.argmax()[None]])
    return sequence[prompt.shape[1] :], state.similar_steps


# The random model soon repeats one token, so at 0.9 every step after the first is similar (unpruned); without a
# threshold every step is pruned with a fresh selection: the two paths of the published loop.
@pytest.mark.parametrize(("threshold", "similar"), [(0.9, STEPS - 2), (None, 0)])
def test_official_greedy_tokens_equal_the_published_decode_loop(tiny_llava, threshold, similar):
    model, processor = tiny_llava
    inputs = make_inputs(processor, ["Which shape crosses the frame first?"], frames=FRAMES, seed=3)
    settings = DyCokeSettings(merging_ratio=0.7, prune_layer=2, decode_prune_ratio=0.8, reuse_threshold=threshold)
    with torch.inference_mode():
        expected, similar_steps = _published_generation(model, inputs, 0.7, 2, 0.8,
                                                         float("inf") if threshold is None else threshold)
        with DyCokeHooks(model, settings) as hooks:
            ours = generate(model, inputs, new_tokens=STEPS)
    stats = hooks.pop_stats()[0]
    assert ours.sequences[0, inputs["input_ids"].shape[1] :].tolist() == expected.tolist()
    assert stats.reused_steps == similar_steps
    assert stats.visual_tokens_after == 3 * 16 + 5 * 4 + 1  # frames 0, 4, 6 whole (8 frames), the newline
    assert similar_steps == similar
