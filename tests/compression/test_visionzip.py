"""VisionZip against re-implementations of the published code (dvlab-research/VisionZip `clip_encoder.py`) and of
its named ports (HoliTom's SigLIP port, LightCompress's Qwen2.5-VL port): the merge itself on random tokens, and on
every family's tiny model the exact tokens the LLM receives in a left-padded batch of two."""

import math

import pytest
import torch
import torch.nn.functional as F
from compression_fakes import generate, video_token_id
from reference_llm import capture_text_inputs

from lightning_prune.compression.hooks import CompressionHooks
from lightning_prune.compression.visionzip import VisionZipMethod, split_budget, visionzip_merge
from lightning_prune.dycoke.families import get_family


def published_merge(hidden, scores, metric, dominant_num, contextual_num):
    """`CLIPVisionTower_VisionZip.forward` after the scores (batched, masks as published; no CLS forced, as in
    HoliTom's port): dominant tokens (position order), then contextual tokens (target order)."""
    batch, length, dim = hidden.shape
    topk = scores.topk(dominant_num, dim=1).indices
    mask = torch.ones(batch, length, dtype=torch.bool).scatter_(1, topk, False)
    dominant_tokens = hidden.masked_select(~mask.unsqueeze(-1)).view(batch, dominant_num, dim)
    metric_filtered = metric[mask].view(batch, length - dominant_num, metric.shape[2])
    hidden_filtered = hidden.masked_select(mask.unsqueeze(-1)).view(batch, length - dominant_num, dim)
    normalized = metric_filtered / metric_filtered.norm(dim=-1, keepdim=True)
    step = max(1, normalized.shape[1] // contextual_num)
    target_indices = torch.arange(0, normalized.shape[1], step)[:contextual_num]
    targets = normalized[:, target_indices, :]
    others = ~torch.isin(torch.arange(normalized.shape[1]), target_indices)
    similarity = torch.bmm(normalized[:, others, :], targets.transpose(1, 2))
    assign = torch.zeros(batch, int(others.sum()), contextual_num, dtype=hidden.dtype)
    assign.scatter_(2, similarity.argmax(dim=2).unsqueeze(-1), 1)
    counts = assign.sum(dim=1).clamp(min=1).unsqueeze(-1)
    aggregated = torch.bmm(assign.transpose(1, 2), hidden_filtered[:, others, :]) / counts
    return torch.cat([dominant_tokens, hidden_filtered[:, target_indices, :] + aggregated], dim=1)


@pytest.mark.parametrize(("length", "dominant", "contextual"), [(576, 54, 10), (196, 42, 8), (16, 3, 1), (16, 0, 4)])
def test_merge_matches_the_published_code(length, dominant, contextual):
    generator = torch.Generator().manual_seed(length + dominant)
    hidden, scores = torch.randn(3, length, 8, generator=generator), torch.rand(3, length, generator=generator)
    metric = torch.randn(3, length, 5, generator=generator)
    expected = published_merge(hidden, scores, metric, dominant, contextual)
    for sample in range(3):
        top, targets, merged = visionzip_merge(hidden[sample], scores[sample], metric[sample], dominant, contextual)
        ours = torch.cat([hidden[sample][top], merged])
        torch.testing.assert_close(ours, expected[sample])
        assert top.tolist() == sorted(scores[sample].topk(dominant).indices.tolist())


def test_split_budget_follows_holitoms_split():
    assert split_budget(576, 64 / 576, 54 / 64) == (54, 10)
    assert split_budget(196, 0.25, 54 / 64) == (41, 8)
    assert split_budget(16, 0.01, 0.5) == (0, 1)


def _feature_layer(base, layers=None):
    layers = base.vision_tower.encoder.layers if layers is None else layers
    feature = base.config.vision_feature_layer
    return feature - 1 if feature > 0 else len(layers) + feature


def _clip_like_reference(model, inputs, family):
    """Per sample: frame scores [F, N] and keys [F, N, d] as the published code / HoliTom's port compute them."""
    base = model.model
    pixels = inputs["pixel_values_videos"]
    batch, frames = pixels.shape[:2]
    tower = base.vision_tower
    tower.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            out = tower(pixels.flatten(0, 1), output_hidden_states=True, output_attentions=True)
    finally:
        tower.set_attn_implementation("sdpa")
    index = _feature_layer(base)
    layer = tower.encoder.layers[index]
    with torch.inference_mode():
        keys = layer.self_attn.k_proj(layer.layer_norm1(out.hidden_states[index]))
    heads = layer.self_attn.num_heads
    keys = keys.view(*keys.shape[:2], heads, -1).mean(dim=2)  # raw_key_states.mean(1): the head mean
    attention = out.attentions[index].float()
    if family == "llava_next_video":  # published: the CLS row summed over the heads; CLS dropped, grid avg-pooled
        scores, keys = attention[:, :, 0, 1:].sum(dim=1), keys[:, 1:]
        grid, stride = math.isqrt(scores.shape[1]), base.config.spatial_pool_stride

        def pool(x):
            return F.avg_pool2d(x.view(len(x), grid, grid, -1).permute(0, 3, 1, 2), stride).flatten(2).transpose(1, 2)
    else:  # HoliTom: the attention averaged over the heads and all queries, pooled bilinear like the features
        scores = attention.mean(dim=1).mean(dim=1)
        grid = math.isqrt(scores.shape[1])

        def pool(x):
            spatial = x.view(len(x), grid, grid, -1).permute(0, 3, 1, 2)
            size = [math.ceil(grid / 2)] * 2
            return F.interpolate(spatial, size=size, mode="bilinear").permute(0, 2, 3, 1).flatten(1, 2)
    scores, keys = pool(scores[..., None])[..., 0], pool(keys.float())
    return scores.view(batch, frames, -1), keys.view(batch, frames, scores.shape[1], -1)


def _internvl_reference(model, inputs):
    """The published CLS rule on InternViT's feature layer, written out head by head: per frame the CLS query's
    softmax row over all keys, summed over the heads, CLS dropped; keys the head mean; then each LLM token takes the
    mean over its 2 x 2 block of patches (the pixel shuffle puts patches (2r..2r+1, 2c..2c+1) into token (r, c))."""
    base = model.model
    pixels = inputs["pixel_values"]  # [B * F, 3, H, W]: the frames as images
    tower = base.vision_tower
    index = _feature_layer(base, tower.encoder.layer)
    layer = tower.encoder.layer[index]
    attention = layer.attention
    with torch.inference_mode():
        hidden = layer.layernorm_before(tower(pixels, output_hidden_states=True).hidden_states[index])
        query = attention.q_norm(attention.q_proj(hidden)).float()
        key = attention.k_norm(attention.k_proj(hidden)).float()
    frames, length, _ = query.shape
    heads = attention.num_heads
    dim = query.shape[-1] // heads
    scores = torch.zeros(frames, length)
    for head in range(heads):
        q, k = query[..., head * dim:(head + 1) * dim], key[..., head * dim:(head + 1) * dim]
        scores += torch.softmax(torch.einsum("fd,fsd->fs", q[:, 0], k) / math.sqrt(dim), dim=-1)
    scores = scores[:, 1:]
    keys = key.view(frames, length, heads, dim).mean(dim=2)[:, 1:]
    grid = math.isqrt(scores.shape[1])
    pooled_scores, pooled_keys = [], []
    for row in range(grid // 2):
        for col in range(grid // 2):
            block = [(2 * row + i) * grid + 2 * col + j for i in range(2) for j in range(2)]
            pooled_scores.append(scores[:, block].mean(dim=1))
            pooled_keys.append(keys[:, block].mean(dim=1))
    batch = inputs["input_ids"].shape[0]
    scores, keys = torch.stack(pooled_scores, dim=1), torch.stack(pooled_keys, dim=1)
    return scores.view(batch, frames // batch, -1), keys.view(batch, frames // batch, scores.shape[1], -1)


def _qwen_reference(model, inputs):
    """LightCompress's Qwen2.5-VL port: the last block's attention (full mask from cu_seqlens), heads averaged,
    queries summed, per merge group of 4, window order undone; keys likewise."""
    import inspect

    from transformers.vision_utils import get_vision_window_index

    visual = model.model.visual
    attention = visual.blocks[-1].attn
    captured = {}
    handle = attention.register_forward_pre_hook(lambda m, a, k: captured.update(k, hidden=a[0] if a else None),
                                                 with_kwargs=True)
    with torch.inference_mode():
        visual(inputs["pixel_values_videos"], grid_thw=inputs["video_grid_thw"])
    handle.remove()
    hidden = captured["hidden"] if captured["hidden"] is not None else captured["hidden_states"]
    seq = hidden.shape[0]
    with torch.inference_mode():
        q, k, _ = attention.qkv(hidden).reshape(seq, 3, attention.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = captured["position_embeddings"]
    q, k = inspect.getmodule(type(attention)).apply_rotary_pos_emb_vision(q, k, cos, sin)
    mask = torch.full([1, seq, seq], torch.finfo(torch.float32).min)
    bounds = captured["cu_seqlens"]
    for i in range(1, len(bounds)):
        mask[..., bounds[i - 1]:bounds[i], bounds[i - 1]:bounds[i]] = 0
    q, k = q.transpose(0, 1).float(), k.transpose(0, 1).float()
    weights = (torch.matmul(q, k.transpose(1, 2)) / math.sqrt(q.shape[-1]) + mask).softmax(dim=-1)
    attn_mean = weights.mean(dim=0).sum(dim=0)
    attn_mean = attn_mean.view(attn_mean.shape[0] // 4, -1).mean(dim=-1)
    keys = k.view(k.shape[0], k.shape[1] // 4, 4, k.shape[-1]).mean(dim=2)
    if hasattr(visual, "window_size"):
        window_index, _ = get_vision_window_index(inputs["video_grid_thw"],
                                                  spatial_merge_size=visual.spatial_merge_size,
                                                  window_size=visual.window_size, patch_size=visual.patch_size)
        reverse = torch.argsort(window_index)
        attn_mean, keys = attn_mean[reverse], keys[:, reverse]
    return attn_mean, keys.mean(dim=0)


@pytest.mark.parametrize("keep_ratio", [0.25, 0.5])
def test_the_llm_receives_the_published_visionzip_tokens(family_model, keep_ratio):
    adapter, model, inputs = family_model
    method = VisionZipMethod(keep_ratio=keep_ratio)
    plain = capture_text_inputs(model, inputs, 1)[0]
    prompts = []  # the input_ids the base model's forward got after the hook shortened them
    with CompressionHooks(model, method) as hooks:
        handle = hooks.base.register_forward_pre_hook(lambda m, a, k: prompts.append(k.get("input_ids")),
                                                      with_kwargs=True)
        try:
            hooked = capture_text_inputs(model, inputs, 1)[0]
        finally:
            handle.remove()
    is_video = inputs["input_ids"] == video_token_id(model)
    trailing = getattr(adapter, "trailing", 0)
    hooked_video = hooked["inputs_embeds"]
    hooked_is_video = hooked.get("visual_pos_masks")  # Qwen3-VL's text model gets the video positions
    if hooked_is_video is None:
        hooked_is_video = prompts[0] == video_token_id(model)  # InternVL: one run per frame, each one shortened
    for sample in range(2):
        video = plain["inputs_embeds"][sample][is_video[sample]]  # [F * N + trailing, D]
        frames = video[: len(video) - trailing].view(8 // adapter.frames_per_step, -1, video.shape[-1])
        count, per_frame, _ = frames.shape
        dominant, contextual = split_budget(per_frame, keep_ratio, 54 / 64)
        if adapter.name.startswith("qwen"):
            scores, keys = _qwen_reference(model, inputs)
            scores = scores.view(2, -1)[sample]
            keys = keys.view(2, count * per_frame, -1)[sample]
            top, targets, merged = visionzip_merge(frames.flatten(0, 1), scores, keys, dominant * count,
                                                   contextual * count)
            expected_tokens = published_merge(frames.flatten(0, 1)[None], scores[None], keys[None],
                                              dominant * count, contextual * count)[0]
            index = torch.cat([top, targets])
            expected = expected_tokens[index.argsort()]  # LightCompress keeps every token in position order
        else:
            scores, keys = (_internvl_reference(model, inputs) if adapter.name == "internvl"
                            else _clip_like_reference(model, inputs, adapter.name))
            expected = torch.cat([published_merge(frames[f][None], scores[sample, f][None], keys[sample, f][None],
                                                  dominant, contextual)[0] for f in range(count)])
            if trailing:
                expected = torch.cat([expected, video[-trailing:]])
        received = hooked_video[sample][hooked_is_video[sample]]
        torch.testing.assert_close(received, expected, atol=1e-5, rtol=1e-4)


def test_scoring_cls_on_a_tower_without_cls_names_the_substitute(family_model):
    adapter, model, _ = family_model
    if adapter.name in ("llava_next_video", "internvl"):
        CompressionHooks(model, VisionZipMethod(scoring="cls"))  # CLIP / InternViT have their CLS: the published rule
        return
    substitute = {"llava_onevision": "mean_query", "qwen2_5_vl": "merge_group", "qwen3_vl": "merge_group"}
    with pytest.raises(ValueError, match=rf"{adapter.name}'s tower has no CLS token; use "
                                         rf"scoring='{substitute[adapter.name]}' \(.* port\) or 'auto', got 'cls'"):
        CompressionHooks(model, VisionZipMethod(scoring="cls"))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match=r"`scoring` must be one of \['auto', 'cls', 'mean_query', 'merge_group'\], "
                                         r"got 'pooled'"):
        VisionZipMethod(scoring="pooled")
    with pytest.raises(ValueError, match=r"`dominant_ratio` must be in \[0, 1\), got 1\.0"):
        VisionZipMethod(dominant_ratio=1.0)


def test_keeping_everything_is_the_plain_model(family_model):
    _, model, inputs = family_model
    plain = generate(model, inputs)
    with CompressionHooks(model, VisionZipMethod(keep_ratio=1.0)):
        hooked = generate(model, inputs)
    assert torch.equal(plain.sequences, hooked.sequences)
    assert all(torch.equal(a, b) for a, b in zip(plain.logits, hooked.logits, strict=True))


def test_internvl_groups_each_token_with_its_two_by_two_block_of_patches():
    adapter = get_family("internvl")
    model, _ = adapter.tiny_model({}, seed=0)
    values = torch.randn(3, 64, 5)  # 3 frames of an 8 x 8 patch grid
    groups = adapter.patch_groups(model.model, values)
    blocks = [[(2 * row + i) * 8 + 2 * col + j for i in range(2) for j in range(2)]
              for row in range(4) for col in range(4)]  # token (row, col) in raster order: patches 2row.., 2col..
    expected = torch.stack([values[:, block] for block in blocks], dim=1)
    assert torch.equal(groups, expected)
    with pytest.raises(ValueError, match=r"Expected a square patch grid and `downsample_ratio` 1 / integer, got 63"):
        adapter.patch_groups(model.model, values[:, :63])


def test_internvl_cls_scoring_needs_the_cls_dropped_from_the_features():
    model, _ = get_family("internvl").tiny_model({}, seed=0)
    model.config.vision_feature_select_strategy = "full"
    with pytest.raises(ValueError, match=r"`vision_feature_select_strategy` must be 'default', got 'full'"):
        CompressionHooks(model, VisionZipMethod()).install()
