"""The published DyCoke code (KD-TAO/DyCoke), re-written for the tests from its definition, not from ours.

Temporal token merging follows `llava/model/llava_arch.py::dycole_ttm` loop for loop; the decode loop follows
`llava/model/language_model/modeling_qwen2.py` (`PrunableDynamicCache.update`, `dycoke_pruning`, `update_cache` and
the decoder-layer loop): before layer L of a one-token step, layer L - 1's head-mean attention of the last token over
the candidates `[start, start + img_len)` (img_len = merged frame tokens - 1) is compared (cosine) with the previous
step's; below 0.9 the kept index list becomes `[0, start) + top-int(img_len * (1 - P)) + [start + img_len, S)`, and
the layers >= L attend to the cache gathered at those indices; otherwise (or before any selection) to the full cache.
Two cases the published code cannot run are given the conventions our documentation states: F = 1 keeps its frame,
and F <= 4 runs the second loop zero times (the published code stacks an empty list and raises).
"""

import math

import torch
import torch.nn.functional as F
from transformers import DynamicCache


def published_ttm(features: torch.Tensor, num_tokens: int, merging_ratio: float) -> list[list[int] | None]:
    """`dycole_ttm` on `[F * N, D]` features: per frame, the kept token indices in output order (None: dropped)."""
    num_frames = features.shape[0] // num_tokens
    if num_frames == 1:
        return [list(range(num_tokens))]
    keep_share = 1 - merging_ratio
    frame = [features[i * num_tokens : (i + 1) * num_tokens] for i in range(num_frames)]
    output: list[list[int] | None] = [None] * num_frames
    for i in range(0, num_frames - 1, 2):
        similarity = F.cosine_similarity(F.normalize(frame[i], p=2, dim=1), F.normalize(frame[i + 1], p=2, dim=1),
                                         dim=1)
        output[i] = list(range(num_tokens))
        output[i + 1] = similarity.topk(int(keep_share * num_tokens), largest=False).indices.tolist()
    for i in range(0, num_frames - 4, 4):
        similarity = F.cosine_similarity(frame[i], frame[i + 2], dim=1)
        output[i] = list(range(num_tokens))
        output[i + 2] = similarity.topk(int(keep_share * num_tokens), largest=False).indices.tolist()
    return output


class PublishedCache(DynamicCache):
    """`PrunableDynamicCache`: layers >= `prune_layer` get the cache gathered at `kv_cache` when it is set."""

    def __init__(self, prune_layer: int, **kwargs):
        super().__init__(**kwargs)
        self.prune_layer = prune_layer
        self.kv_cache: list[int] | None = None

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if self.kv_cache is None or layer_idx < self.prune_layer:
            return keys, values
        index = torch.tensor(self.kv_cache, device=keys.device)
        return keys.index_select(2, index), values.index_select(2, index)


class PublishedDecodeState:
    """`DycokeConfigs` plus `dycoke_pruning` / `update_cache` for one generation (batch 1)."""

    def __init__(self, start: int, image_length: int, ratio: float, threshold: float = 0.9):
        self.start, self.image_length, self.ratio, self.threshold = start, image_length, ratio, threshold
        self.attention_score: torch.Tensor | None = None
        self.similar_steps = 0

    def kept_indices(self, attention: torch.Tensor, sequence_length: int) -> list[int] | None:
        """The step's `kv_cache` from layer L - 1's head-mean attention `[S]` of the last token (None: full)."""
        image_attention = attention[self.start : self.start + self.image_length]
        similarity = 0.0 if self.attention_score is None else float(
            F.cosine_similarity(image_attention, self.attention_score, dim=0))
        self.attention_score = image_attention
        if similarity >= self.threshold:
            self.similar_steps += 1
            return None
        keep = int(self.image_length * (1 - self.ratio))
        top = (image_attention.topk(keep, sorted=False).indices + self.start).tolist()
        return list(range(self.start)) + top + list(range(self.start + self.image_length, sequence_length))


def published_step_attention(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """`calculate_attention_weights` on the decode query of layer L - 1 (no mask, as the published loop passes
    none), then `dycoke_pruning`'s `attn.mean(1)[0, -1]`: every op in the inputs' dtype.

    Args:
        query: `[1, H, 1, d]`; key: `[1, H_kv, S, d]` (repeated per query head as `repeat_kv` does).
    """
    batch, kv_heads, length, dim = key.shape
    groups = query.shape[1] // kv_heads
    key = key[:, :, None].expand(batch, kv_heads, groups, length, dim).reshape(batch, kv_heads * groups, length, dim)
    scores = query @ key.transpose(-2, -1) * (1 / math.sqrt(query.size(-1)))
    return torch.softmax(scores, dim=-1).mean(1)[0, -1]


IMAGE_TOKEN_INDEX = -200  # `llava/constants.py`


def published_qwen_1_5_prompt(context: str) -> str:
    """The prompt `lmms_eval/models/llava_onevision.py` builds for one video: `"<image>" + "\\n" + context` as the
    user message of `conv_templates["qwen_1_5"]` (`conv_qwen`: CHATML, system "<|im_start|>system\\nYou are a helpful
    assistant.", roles "<|im_start|>user" / "<|im_start|>assistant", sep "<|im_end|>"), then an empty assistant turn,
    rendered by `Conversation.get_prompt`'s CHATML branch."""
    system, roles, sep = "<|im_start|>system\nYou are a helpful assistant.", ("<|im_start|>user",
                                                                           "<|im_start|>assistant"), "<|im_end|>"
    messages = [(roles[0], "<image>" + "\n" + context), (roles[1], None)]
    rendered = "" if system == "" else system + sep + "\n"
    for role, message in messages:
        rendered += role + "\n" + message + sep + "\n" if message else role + "\n"
    return rendered


def published_tokenizer_image_token(prompt: str, tokenizer) -> list[int]:
    """`llava/mm_utils.py::tokenizer_image_token`: each chunk between "<image>" tokenized on its own, joined by
    `IMAGE_TOKEN_INDEX` (a leading BOS kept once)."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    separated = [part for chunk in chunks for part in (chunk, [IMAGE_TOKEN_INDEX] * (offset + 1))][:-1]
    for part in separated:
        ids.extend(part[offset:])
    return ids
