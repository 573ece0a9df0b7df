"""FrameFusion on every family's tiny model: generated tokens and logits against a re-implementation of the published
decoder loop (thu-nics/FrameFusion `models/qwen2/modeling_qwen2.py`: the FrameFusion call before layer 0's attention
and after every layer's attention, residual added, before the MLP; pruning by the last row of the eager attention
weights), a cost of 1 equal to the model without it, and the refusals."""

import pytest
import torch
from compression_fakes import first_sample, generate, same_generation, video_token_id
from reference_llm import _additive, _gather, _rope_ids, capture_text_inputs
from test_framefusion import PublishedFrameFusion, published_ratio
from transformers import DynamicCache

from lightning_prune.compression.framefusion import TEXT_TOKEN, FrameFusionMethod
from lightning_prune.compression.hooks import CompressionHooks


class SplitVideoFrameFusion(PublishedFrameFusion):
    """The port for a video split by text (Qwen3-VL's timestamps between frames; not a published model): the same
    rule, pruning ranking the video tokens only instead of the span from the first to the last."""

    def __init__(self, *args, visual):
        super().__init__(*args)
        self.visual = visual

    def forward(self, hidden, positions, attention=None):
        if not (self.finish_merging and not self.finish_pruning):
            return super().forward(hidden, positions, attention)
        is_visual = self.visual[positions[0]]
        video = is_visual.nonzero()[:, 0]
        scores = attention.mean(dim=(1, 2))[0][video]
        ratio = published_ratio(self.sparsity, self.cost, self.num_layers)
        top = video[scores.topk(round(len(video) * (1 - ratio))).indices]
        keep = torch.cat([(~is_visual).nonzero()[:, 0], top]).sort().values
        self.finish_pruning = True
        return hidden[:, keep], positions[:, keep]


def _layout(adapter, model, inputs):
    base = adapter.find_base(model)
    with torch.inference_mode():
        video = adapter.encode_video(base, dict(inputs))
    return video.num_frames, video.tokens_per_frame


def reference_framefusion(model, inputs, calls, layout, method, first, steps):
    """Batch-1 greedy tokens, per-step logits and per-layer cached positions of the published loop."""
    base = next(module for module in model.modules() if hasattr(module, "language_model"))
    text = base.language_model
    prefill = calls[0]
    hidden = prefill["inputs_embeds"]
    length = hidden.shape[1]
    position_ids = prefill["position_ids"]
    if position_ids is None:
        position_ids = torch.arange(length)[None]
    rope = text.rotary_emb(hidden, _rope_ids(position_ids))
    deepstack = prefill.get("deepstack_visual_embeds") or []
    visual = (inputs["input_ids"][0] == video_token_id(model)).nonzero()[:, 0]
    frames, per_frame = layout
    types = torch.full((length,), TEXT_TOKEN)
    types[visual[: frames * per_frame]] = torch.arange(per_frame).repeat(frames)
    layers = len(text.layers)
    arguments = (types, per_frame, int(visual[0]), len(visual), method.cost, method.similarity_lower_bound,
                 method.ratio_lower_bound, layers - first)
    if int(visual[-1] - visual[0]) + 1 == len(visual):
        fusion = PublishedFrameFusion(*arguments)
    else:
        is_video = torch.zeros(length, dtype=torch.bool)
        is_video[visual] = True
        fusion = SplitVideoFrameFusion(*arguments, visual=is_video)
    cache = DynamicCache(config=text.config)
    kept = torch.arange(length)[None]
    cached = {}
    text.set_attn_implementation("eager")
    try:
        for index, layer in enumerate(text.layers):
            if index == first:  # before layer 0's attention (after the DeepStack layers on Qwen3-VL)
                hidden, kept = fusion.forward(hidden, kept)
            size = hidden.shape[1]
            causal = torch.ones(size, size, dtype=torch.bool).tril()[None, None]
            residual = hidden
            output, weights = layer.self_attn(
                layer.input_layernorm(hidden), position_embeddings=tuple(_gather(p, kept) for p in rope),
                attention_mask=_additive(causal, hidden), cache=cache)
            cached[index] = kept
            hidden = residual + output
            # The published call after the attention; after the last layer's it would change no output.
            if first <= index < layers - 1:
                hidden, kept = fusion.forward(hidden, kept, weights[:, :, -1:, :])
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
            if index < len(deepstack):
                hidden = hidden.clone()
                hidden[:, visual] = hidden[:, visual] + deepstack[index].to(hidden.dtype)
        logits = [model.lm_head(text.norm(hidden[:, -1]))]
        tokens = [logits[-1].argmax(-1)]
        for step in range(1, steps):
            hidden = model.get_input_embeddings()(tokens[-1])[:, None]
            step_rope = text.rotary_emb(hidden, _rope_ids(calls[step]["position_ids"]))
            for layer in text.layers:
                hidden = layer(hidden, attention_mask=None, position_embeddings=step_rope, cache=cache,
                               use_cache=True)
            logits.append(model.lm_head(text.norm(hidden[:, -1])))
            tokens.append(logits[-1].argmax(-1))
    finally:
        text.set_attn_implementation("sdpa")
    return torch.stack(tokens, dim=1), logits, cached, fusion


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize(("cost", "bound"), [(0.5, 0.3), (0.5, 0.0), (0.8, 0.5)])
def test_framefusion_generates_as_the_published_loop(family_model, implementation, cost, bound):
    adapter, model, inputs = family_model
    single = first_sample(inputs)
    steps = 3
    method = FrameFusionMethod(cost=cost, similarity_lower_bound=bound)
    first = len(getattr(model.config.vision_config, "deepstack_visual_indexes", None) or ())
    calls = capture_text_inputs(model, single, steps)
    with torch.no_grad():
        tokens, logits, cached, _ = reference_framefusion(
            model, single, calls, _layout(adapter, model, single), method, first, steps)
    model.model.language_model.set_attn_implementation(implementation)
    try:
        with CompressionHooks(model, method) as hooks:
            output = generate(model, single, new_tokens=steps)
            kept = hooks.layer_positions
    finally:
        model.model.language_model.set_attn_implementation("sdpa")
    assert all(torch.equal(kept[layer], cached[layer]) for layer in range(first, len(cached))), (kept, cached)
    assert cached[len(cached) - 1].shape[1] < single["input_ids"].shape[1]  # it did compress
    assert torch.equal(output.sequences[:, -steps:], tokens)
    for ours, theirs in zip(output.logits, logits, strict=True):
        torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)


def test_framefusion_cost_one_is_the_model_without_it(family_model):
    _, model, inputs = family_model
    single = first_sample(inputs)
    plain = generate(model, single)
    with CompressionHooks(model, FrameFusionMethod(cost=1.0)) as hooks:
        compressed = generate(model, single)
        stats = hooks.pop_stats()
    assert same_generation(plain, compressed)
    assert stats[0].visual_tokens_after == stats[0].visual_tokens_before


def test_framefusion_refuses_a_batch_before_generating(family_model):
    _, model, inputs = family_model
    with CompressionHooks(model, FrameFusionMethod()), pytest.raises(
            ValueError, match="FrameFusion runs one prompt at a time .* got a batch of 2: set the batch size to 1"):
        generate(model, inputs)


def test_framefusion_refuses_flash_attention(family_model):
    _, model, _ = family_model
    text_config = model.config.text_config
    original = text_config._attn_implementation
    text_config._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(ValueError, match="framefusion reads attention weights .* got 'flash_attention_2'"):
            CompressionHooks(model, FrameFusionMethod())
    finally:
        text_config._attn_implementation = original
