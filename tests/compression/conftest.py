"""Tiny random models of every family the compression methods serve and a left-padded batch of two random videos."""

import numpy as np
import pytest
from compression_fakes import FRAMES, QUESTIONS

from lightning_prune.compression.hooks import COMPRESSION_FAMILIES
from lightning_prune.dycoke.families import get_family


@pytest.fixture(scope="session", params=COMPRESSION_FAMILIES)
def family_model(request):
    """`(adapter, model, padded inputs of two videos)` for each family; tests that change the model must undo it."""
    adapter = get_family(request.param)
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
