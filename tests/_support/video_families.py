"""Every registered VLM family's tiny random model with a left-padded batch of two random videos."""

from __future__ import annotations

import numpy as np

from lightning_prune.dycoke.families import get_family

FRAMES = 8
QUESTIONS = ["What moves?", "Which shape crosses the frame first, and where to?"]


def padded_family_batch(name: str) -> tuple:
    """`(adapter, model, padded inputs of two videos)` for family `name` (the first prompt is left-padded)."""
    adapter = get_family(name)
    model, processor = adapter.tiny_model({}, seed=0)
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, (FRAMES, 32, 32, 3), dtype=np.uint8) for _ in QUESTIONS]
    prompts = [processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}],
        add_generation_prompt=True) for question in QUESTIONS]
    processor.tokenizer.padding_side = "left"
    inputs = dict(processor(text=prompts, videos=videos, return_tensors="pt", padding=True,
                            **adapter.processor_kwargs(videos)))
    assert bool((inputs["attention_mask"][0] == 0).any()), "the first prompt must be padded"
    return adapter, model, inputs
