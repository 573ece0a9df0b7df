"""A re-implementation of a decoder-only LLM's generation loop with a per-layer token cut, written for the tests from
the published FastV KV-cache code's definition (`FastVLlamaModel.forward` in pkunlp-icler/FastV
`src/FastV/lmms-eval/fastv_kvcache.py`): layers < K see every token; before layer K the hidden states are gathered at
the kept indices (sorted), the position ids become those indices' original ids and the mask is rebuilt for the
shorter sequence; each layer caches what it saw, so decoding attends to the kept tokens in layers >= K.

It drives the model's own decoder layers, norm, rotary embedding and LM head one by one; the inputs the text model got
from the plain model's `generate` (embeddings with the video inserted, position ids, the 2-D mask, DeepStack) are
captured with a forward pre-hook.
"""

import torch
from transformers import DynamicCache


def capture_text_inputs(model, inputs: dict, new_tokens: int) -> list[dict]:
    """The keyword arguments of every text-model call of the plain model's greedy `generate` (prefill first)."""
    base = next(module for module in model.modules() if hasattr(module, "language_model"))
    calls = []
    handle = base.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(dict(kwargs)), with_kwargs=True)
    try:
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    finally:
        handle.remove()
    return calls


def _rope_ids(position_ids: torch.Tensor) -> torch.Tensor:
    return position_ids[1:] if position_ids.dim() == 3 and position_ids.shape[0] == 4 else position_ids


def _mask(query_ok: torch.Tensor, key_ok: torch.Tensor, causal: bool) -> torch.Tensor:
    """Boolean [B, 1, q, k] mask: keys that are not padding (and not in the future); padded queries see themselves."""
    q, k = query_ok.shape[1], key_ok.shape[1]
    mask = key_ok[:, None, None, :].expand(-1, 1, q, k).clone()
    if causal:
        mask &= torch.ones(q, k, dtype=torch.bool).tril(k - q)
    if q == k:
        mask |= torch.eye(q, dtype=torch.bool)
    return mask


def reference_generate(model, calls: list[dict], visual_mask: torch.Tensor, keep_fn, cut_layer: int, new_tokens: int,
                       earlier_cache: bool = False):
    """Greedy tokens and per-step logits of the model with the cut (`visual_mask` [B, S]: the prompt's video tokens,
    where DeepStack adds its features too; `earlier_cache`: after the prefill the layers < K drop the cut tokens from
    their cache too, as PruneVid's stage 2 does). `keep_fn(attention [B, S], visual_mask)` gives
    the [B, S'] kept indices from layer `cut_layer - 1`'s last-row attention (head mean, softmax over all keys)."""
    base = next(module for module in model.modules() if hasattr(module, "language_model"))
    text = base.language_model
    prefill = calls[0]
    hidden = prefill["inputs_embeds"]
    mask2d = prefill["attention_mask"].bool()
    batch, length = mask2d.shape
    position_ids = prefill["position_ids"]
    if position_ids is None:
        position_ids = torch.arange(length)[None].expand(batch, -1)
    rope = text.rotary_emb(hidden, _rope_ids(position_ids))
    deepstack = prefill.get("deepstack_visual_embeds") or []
    cache = DynamicCache(config=text.config)
    keep = torch.arange(length)[None].expand(batch, -1)
    mask = _mask(mask2d, mask2d, causal=True)
    captured = {}
    text.set_attn_implementation("eager")  # as the published code: layer K - 1 returns its attention weights
    handle = text.layers[cut_layer - 1].self_attn.register_forward_hook(
        lambda module, args, output: captured.__setitem__("weights", output[1]))
    try:
        for index, layer in enumerate(text.layers):
            if index == cut_layer:
                attention = captured["weights"][:, :, -1, :].float().mean(dim=1)  # [B, S]: last row, head mean
                keep_local = keep_fn(attention, visual_mask.gather(1, keep))
                keep = keep.gather(1, keep_local)
                hidden = hidden.gather(1, keep_local[..., None].expand(-1, -1, hidden.shape[-1]))
            mask_kept = torch.stack([mask[b][:, keep[b]][:, :, keep[b]] for b in range(batch)])
            rope_kept = tuple(_gather(part, keep) for part in rope)
            hidden = layer(hidden, attention_mask=_additive(mask_kept, hidden), position_embeddings=rope_kept,
                           cache=cache, use_cache=True)
            if index < len(deepstack):
                hidden = hidden.clone()
                hidden[visual_mask] = hidden[visual_mask] + deepstack[index].to(hidden.dtype)
    finally:
        handle.remove()
        text.set_attn_implementation("sdpa")
    if earlier_cache:  # physically crop the earlier layers' cache to the kept tokens
        for index in range(cut_layer):
            layer_cache = cache.layers[index]
            index_4d = keep[:, None, :, None].expand(-1, layer_cache.keys.shape[1], -1, layer_cache.keys.shape[-1])
            layer_cache.keys = layer_cache.keys.gather(2, index_4d)
            layer_cache.values = layer_cache.values.gather(2, index_4d)
    logits = [model.lm_head(text.norm(hidden[:, -1]))]
    tokens = [logits[-1].argmax(-1)]
    for step in range(1, new_tokens):
        call = calls[step]
        hidden = model.get_input_embeddings()(tokens[-1])[:, None]
        step_rope = text.rotary_emb(hidden, _rope_ids(call["position_ids"]))
        decode_mask = call["attention_mask"].bool()  # [B, S + step]
        generated = torch.arange(length, decode_mask.shape[1])[None].expand(batch, -1)
        for index, layer in enumerate(text.layers):
            cut = index >= cut_layer or earlier_cache
            columns = torch.cat([keep if cut else torch.arange(length)[None].expand(batch, -1), generated], dim=1)
            layer_mask = decode_mask.gather(1, columns)[:, None, None, :]
            hidden = layer(hidden, attention_mask=_additive(layer_mask, hidden), position_embeddings=step_rope,
                           cache=cache, use_cache=True)
        logits.append(model.lm_head(text.norm(hidden[:, -1])))
        tokens.append(logits[-1].argmax(-1))
    return torch.stack(tokens, dim=1), logits, keep


def _gather(part: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    # cos / sin are [B, S, d] (1-D RoPE) or [3, B, S, d] before the multimodal sections are applied
    if part.dim() == 3:
        return part.gather(1, keep[..., None].expand(-1, -1, part.shape[-1]))
    return part.gather(2, keep[None, ..., None].expand(part.shape[0], -1, -1, part.shape[-1]))


def _additive(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The eager layers' additive mask: 0 where allowed, the dtype's minimum elsewhere."""
    return torch.zeros(mask.shape, dtype=like.dtype).masked_fill(~mask, torch.finfo(like.dtype).min)
