"""Pieces of the small random models the family adapters build offline: a byte-level tokenizer and config merging."""

from __future__ import annotations

from typing import Any


def byte_tokenizer(specials: list[str], image_token: str, video_token: str, named: dict[str, str] | None = None):
    """A byte-level BPE tokenizer without merges: every string is encodable; 256 bytes plus `specials`.

    `specials[0]` is the padding token, `<|im_end|>` (which must be among them) the end of a turn; `named` adds
    named special tokens (`tokenizer.<name>` and `tokenizer.<name>_id`), e.g. InternVL's `context_image_token`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={symbol: i for i, symbol in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token=specials[0],
        extra_special_tokens={"image_token": image_token, "video_token": video_token, **(named or {})},
    )


def chat_template(video_placeholder: str) -> str:
    """A ChatML template whose video part is `video_placeholder` (the processor expands it to the video's tokens)."""
    return (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% for part in message['content'] %}{% if part['type'] == 'video' %}" + video_placeholder +
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def merge_config(defaults: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """`defaults` with `overrides` on top; sub-dicts (`text_config`, `vision_config`) are merged key by key."""
    overrides = dict(overrides or {})
    merged = {key: {**value, **overrides.pop(key, {})} if isinstance(value, dict) else value
              for key, value in defaults.items()}
    merged.update(overrides)
    return merged


def finish(model, tokenizer):
    """Eval mode and the tokenizer's pad / end-of-turn ids as the generation defaults."""
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
