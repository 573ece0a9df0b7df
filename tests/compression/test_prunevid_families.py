"""PruneVid on every family's tiny model.

Stage 1: the LLM receives the published `merge_frames_dynamic` tokens (re-written in `test_prunevid`) where the video
was, with the positions of their representatives (multimodal RoPE) or renumbered (1-D RoPE). Stage 2: generated
tokens and logits against a re-implementation of the published decoder loop (`llama.py` `LlamaModelVTP.forward` and
`elastic_cache.py` `VTPWindowCache`): layer L's attention without RoPE and mask scores the video, layer L's output
keeps the prefix, the kept video tokens and the suffix, and the cache of layers 0..L is cut to them.
"""

import pytest
import torch
from compression_fakes import first_sample, generate, same_generation, video_token_id
from reference_llm import _additive, _gather, _rope_ids, capture_text_inputs
from test_prunevid import published_merge_frames_dynamic, published_process_attention
from transformers import DynamicCache

from lightning_prune.compression.hooks import CompressionHooks
from lightning_prune.compression.prunevid import PruneVidMethod


def _settings(adapter, **settings):
    # The test videos have 8 frames: 4 temporal patches on the Qwen families, fewer than the published k = 7.
    small = {"k": 3, "temporal_segment_ratio": 0.5} if adapter.frames_per_step > 1 else {}
    return PruneVidMethod(**{"selected_layer": 1, "seed": 3, **small, **settings})


def _run(model, single, method, steps):
    """Our generation, plus what the base model (shortened prompt) and the text model received."""
    base = next(module for module in model.modules() if hasattr(module, "language_model"))
    seen, text_calls = [], []
    with CompressionHooks(model, method) as hooks:
        handles = [base.register_forward_pre_hook(lambda m, a, k: seen.append(dict(k)), with_kwargs=True),
                   base.language_model.register_forward_pre_hook(lambda m, a, k: text_calls.append(dict(k)),
                                                                 with_kwargs=True)]
        try:
            output = generate(model, single, new_tokens=steps)
        finally:
            for handle in handles:
                handle.remove()
        kept = hooks.layer_positions
    return output, seen[0]["input_ids"], text_calls, kept


def _published_stage_one(adapter, model, single, method):
    base = adapter.find_base(model)
    with torch.inference_mode():
        video = adapter.encode_video(base, dict(single))
    frames = video.frames[0]
    torch.manual_seed(method.seed)
    tokens, static, dynamic, windows, sources = published_merge_frames_dynamic(
        frames.reshape(1, -1, frames.shape[-1]), video.num_frames, video.tokens_per_frame, method.tau,
        method.temporal_segment_ratio, method.cluster_ratio, k=method.k, sources=True)
    total = video.num_frames * video.tokens_per_frame
    trailing = video.output.pooler_output[0][total:total + video.trailing]
    return torch.cat([tokens[0], trailing]), (static, dynamic, windows), sources, video.trailing


def test_prunevid_stage_one_feeds_the_llm_the_published_merged_tokens(family_model):
    adapter, model, inputs = family_model
    single = first_sample(inputs)
    method = _settings(adapter, alpha=1.0)
    plain_calls = capture_text_inputs(model, single, 1)
    expected, _, sources, trailing = _published_stage_one(adapter, model, single, method)
    _, input_ids, text_calls, _ = _run(model, single, method, 1)
    video_id = video_token_id(model)
    visual = (input_ids[0] == video_id).nonzero()[:, 0]
    assert len(visual) == len(expected) < int((single["input_ids"][0] == video_id).sum())
    torch.testing.assert_close(text_calls[0]["inputs_embeds"][0, visual], expected, rtol=0, atol=0)
    positions = text_calls[0]["position_ids"]
    original = plain_calls[0]["position_ids"]
    if original is not None and original.dim() == 3:  # multimodal RoPE: (t, h, w) of each token's representative
        columns = (single["input_ids"][0] == video_id).nonzero()[:, 0]
        frame_columns = columns[sources]
        rows = slice(original.shape[0] - 3, None)
        assert torch.equal(positions[rows, 0, visual[: len(sources)]], original[rows, 0, frame_columns])
        if trailing:
            assert torch.equal(positions[rows, 0, visual[len(sources):]], original[rows, 0, columns[-trailing:]])
    elif positions is not None:  # 1-D RoPE: the shortened prompt numbered 0, 1, ... as PLLaVA builds it
        assert positions[0].tolist() == list(range(input_ids.shape[1]))


def reference_prunevid(model, input_ids, calls, sizes, trailing, method, steps):
    """Batch-1 greedy tokens, per-step logits and kept positions of the published stage-2 loop."""
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
    visual = (input_ids[0] == video_token_id(model)).nonzero()[:, 0]
    image = visual[: len(visual) - trailing]  # the merged tokens; a newline after them is not scored
    img_end = int(visual[-1])
    cache = DynamicCache(config=text.config)
    kept = torch.arange(length)
    selected = method.selected_layer
    for index, layer in enumerate(text.layers):
        if index == selected:  # LlamaAttention: q k^T / sqrt(d), softmax in float32, before RoPE, no mask
            attention = layer.self_attn
            normed = layer.input_layernorm(hidden)
            shape = (1, hidden.shape[1], -1, attention.head_dim)
            query, key = attention.q_proj(normed).view(shape), attention.k_proj(normed).view(shape)
            if getattr(attention, "q_norm", None) is not None:
                query, key = attention.q_norm(query), attention.k_norm(key)
            query, key = query.transpose(1, 2), key.transpose(1, 2)
            key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)  # the port's GQA (KV heads repeated)
            weights = torch.softmax(query @ key.transpose(2, 3) / attention.head_dim**0.5, dim=-1,
                                    dtype=torch.float32).to(query.dtype)
            top = published_process_attention(weights[:, :, img_end + 1:][..., image], *sizes, method.alpha)
            index_list = torch.cat([(torch.arange(length)[:, None] != image[None]).all(1).nonzero()[:, 0],
                                    image[top]]).sort().values
        size = hidden.shape[1]
        causal = torch.ones(size, size, dtype=torch.bool).tril()[None, None]
        hidden = layer(hidden, attention_mask=_additive(causal, hidden),
                       position_embeddings=tuple(_gather(part, kept[None]) for part in rope), cache=cache,
                       use_cache=True)
        if index < len(deepstack):
            hidden = hidden.clone()
            hidden[:, visual] = hidden[:, visual] + deepstack[index].to(hidden.dtype)
        if index == selected:  # prompt_prefill: cut this layer's output and the cache of layers 0..L
            hidden, kept = hidden[:, index_list], index_list
            for earlier in range(selected + 1):
                cache.layers[earlier].keys = cache.layers[earlier].keys[:, :, index_list]
                cache.layers[earlier].values = cache.layers[earlier].values[:, :, index_list]
    logits = [model.lm_head(text.norm(hidden[:, -1]))]
    tokens = [logits[-1].argmax(-1)]
    for step in range(1, steps):
        hidden = model.get_input_embeddings()(tokens[-1])[:, None]
        step_rope = text.rotary_emb(hidden, _rope_ids(calls[step]["position_ids"]))
        for layer in text.layers:
            hidden = layer(hidden, attention_mask=None, position_embeddings=step_rope, cache=cache, use_cache=True)
        logits.append(model.lm_head(text.norm(hidden[:, -1])))
        tokens.append(logits[-1].argmax(-1))
    return torch.stack(tokens, dim=1), logits, kept


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize(("alpha", "temporal_merging"), [(0.4, True), (0.25, True), (0.5, False)])
def test_prunevid_generates_as_the_published_loop(family_model, implementation, alpha, temporal_merging):
    adapter, model, inputs = family_model
    single = first_sample(inputs)
    steps = 3
    method = _settings(adapter, alpha=alpha, temporal_merging=temporal_merging)
    model.model.language_model.set_attn_implementation(implementation)
    try:
        output, input_ids, calls, kept = _run(model, single, method, steps)
    finally:
        model.model.language_model.set_attn_implementation("sdpa")
    if temporal_merging:
        _, sizes, _, trailing = _published_stage_one(adapter, model, single, method)
    else:  # the refinement: every frame a segment of dynamic tokens
        layout = adapter.encode_video(adapter.find_base(model), dict(single))
        frames, per_frame, trailing = layout.num_frames, layout.tokens_per_frame, layout.trailing
        sizes = ([0] * frames, [per_frame] * frames, [1] * frames)
    with torch.no_grad():
        tokens, logits, expected = reference_prunevid(model, input_ids, calls, sizes, trailing, method, steps)
    assert all(torch.equal(kept[layer][0], expected) for layer in range(len(kept)))  # earlier caches cut too
    assert len(expected) < input_ids.shape[1]
    assert torch.equal(output.sequences[:, -steps:], tokens)
    for ours, theirs in zip(output.logits, logits, strict=True):
        torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)


def test_prunevid_without_merging_keeping_everything_is_the_model_without_it(family_model):
    adapter, model, inputs = family_model
    single = first_sample(inputs)
    plain = generate(model, single)
    with CompressionHooks(model, _settings(adapter, alpha=1.0, temporal_merging=False)) as hooks:
        compressed = generate(model, single)
        stats = hooks.pop_stats()
    assert same_generation(plain, compressed)
    assert stats[0].visual_tokens_after == stats[0].visual_tokens_before


def test_prunevid_refuses_a_batch_before_generating(family_model):
    adapter, model, inputs = family_model
    with CompressionHooks(model, _settings(adapter)), pytest.raises(
            ValueError, match="PruneVid runs one prompt at a time .* got a batch of 2: set the batch size to 1"):
        generate(model, inputs)


def test_prunevid_refuses_a_layer_without_one_after_it(family_model):
    _, model, _ = family_model
    with pytest.raises(ValueError, match=r"`selected_layer` must leave a layer after it in the LLM's 4 layers "
                                         r"\(0 to 2\), got 3; None \(the default\) takes the published layer's "
                                         r"relative depth, 10 of 32 layers"):
        CompressionHooks(model, PruneVidMethod(selected_layer=3))


def test_prunevid_refuses_more_neighbours_than_frames(family_model):
    adapter, model, inputs = family_model
    frames = 8 // adapter.frames_per_step
    with CompressionHooks(model, PruneVidMethod(selected_layer=1, k=frames + 1)), pytest.raises(
            ValueError, match=rf"`k` must be at most the video's {frames} frames"):
        generate(model, first_sample(inputs))


def test_prunevid_without_a_layer_takes_the_published_relative_depth(family_model):
    _, model, _ = family_model
    default = PruneVidMethod()
    assert default.selected_layer is None  # the default: the published depth, relative
    hooks = CompressionHooks(model, default)
    assert hooks.cut_layers == (1, 2)  # round(10 / 32 * 4) = 1: scoring before layer 1, cut before layer 2
    for layers, published in ((32, 10), (28, 9), (24, 8)):  # PLLaVA-7B's 32 layers: exactly the published 10
        default.check_model(None, None, layers)
        assert default.cut_layers(layers) == (published, published + 1)
    budget = PruneVidMethod.at_budget(0.25)
    assert (budget.alpha, budget.selected_layer, budget.tau) == (0.25, None, 0.8)
