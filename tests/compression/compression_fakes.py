"""Shared helpers of the compression tests: greedy generation with logits, and comparing two generations."""

import torch


def generate(model, inputs: dict, new_tokens: int = 4, **kwargs):
    with torch.inference_mode():
        return model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              output_logits=True, return_dict_in_generate=True, **kwargs)


def same_generation(first, second) -> bool:
    return torch.equal(first.sequences, second.sequences) and all(
        torch.equal(a, b) for a, b in zip(first.logits, second.logits, strict=True))


def first_sample(inputs: dict) -> dict:
    """The batch's first sample alone, its padding removed (the prompt is left-padded)."""
    keep = inputs["attention_mask"][0].bool()
    single = {}
    for name, value in inputs.items():
        if name in ("input_ids", "attention_mask", "mm_token_type_ids"):
            single[name] = value[:1, keep]
        elif name == "pixel_values_videos" and "video_grid_thw" in inputs:
            single[name] = value[: int(inputs["video_grid_thw"][0].prod())]
        elif name == "pixel_values":  # InternVL: every sample's frames as images, one sample after another
            single[name] = value[: value.shape[0] // inputs["input_ids"].shape[0]]
        elif name in ("video_grid_thw", "second_per_grid_ts", "pixel_values_videos"):
            single[name] = value[:1]
        else:
            single[name] = value
    return single


def video_token_id(model) -> int:
    """The placeholder id of the model's video tokens, as its family adapter names it (InternVL: `<IMG_CONTEXT>`)."""
    from lightning_prune.dycoke.families import family_of

    adapter, base = family_of(model)
    return adapter.video_token_id(base)
