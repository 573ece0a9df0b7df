"""Shared helpers of the DyCoke tests: a padded batch of random videos and greedy generation."""

import numpy as np
import torch

FRAMES = 8


def make_inputs(processor, questions: list[str], frames: int = FRAMES, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    videos = [rng.integers(0, 256, (frames, 28, 28, 3), dtype=np.uint8) for _ in questions]
    prompts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}],
            add_generation_prompt=True,
        )
        for question in questions
    ]
    processor.tokenizer.padding_side = "left"
    return dict(processor(text=prompts, videos=videos, return_tensors="pt", padding=True))


def generate(model, inputs: dict, new_tokens: int = 4, **kwargs):
    with torch.inference_mode():
        return model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              output_logits=True, return_dict_in_generate=True, **kwargs)
