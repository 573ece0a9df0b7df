"""What a video LLM's text model is given: position ids recorded per forward, and greedy steps with explicit positions
(the independent reference of the `positions: original` rule: the uncompressed model with dropped tokens masked out)."""

from __future__ import annotations

import torch


def greedy_steps(model, inputs: dict, mask: torch.Tensor, steps: int = 3) -> list[torch.Tensor]:
    """Last-token logits of a prefill and `steps - 1` greedy decode steps, with explicit `generate`-style positions
    (counted over the whole prompt's non-padding tokens) and the given prompt mask."""
    positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        out = model(**{**inputs, "attention_mask": mask}, position_ids=positions, use_cache=True)
        logits = [out.logits[:, -1].float()]
        for _ in range(steps - 1):
            positions = positions[:, -1:] + 1
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            token = logits[-1].argmax(-1, keepdim=True)
            out = model(input_ids=token, attention_mask=mask, position_ids=positions,
                        past_key_values=out.past_key_values, use_cache=True)
            logits.append(out.logits[:, -1].float())
    return logits


def recorded_positions(model, run) -> list[torch.Tensor]:
    """The `position_ids` the text model gets at each forward while `run()` generates."""
    seen = []
    handle = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["position_ids"].clone()), with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return seen
