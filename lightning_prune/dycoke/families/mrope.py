"""What the Qwen-VL families share: video features per temporal patch and multimodal RoPE positions.

- Video features: `get_video_features(pixel_values_videos, video_grid_thw)`, one `[t * h * w / m^2, D]` tensor per
  video for a `(t, h, w)` patch grid and an m x m spatial merge. A temporal patch (2 input frames) is one TTM frame:
  `t` frames of `h * w / m^2` tokens each (Qwen2.5-VL-7B at 448 x 448: 16 x 16 = 256 per frame, 16 frames for 32
  input frames). Windows of 4 therefore span 8 input frames.
- Positions: 3-D (temporal, height, width) position ids from the model's `get_rope_index`. Kept video tokens keep
  their original (t, h, w) ids and the text after the video keeps its original ids, so RoPE still tells the LLM
  where and when each kept token was; decoding continues the original numbering. Only the plain 1-D row that
  `generate` adds in front (used for masks) is renumbered over the shorter prompt (DyCoke's `positions: original`
  keeps that row original too).
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import nn

from lightning_prune.dycoke.families.base import FamilyAdapter, VideoTokens, contiguous_positions, encoder_output

_ROPE_INPUTS = ("input_ids", "mm_token_type_ids", "image_grid_thw", "video_grid_thw", "second_per_grid_ts",
                "attention_mask")


class MultimodalRopeAdapter(FamilyAdapter):
    """Base of the Qwen-VL adapters (subclasses set the names, classes and `tiny_model`)."""

    frames_per_step: ClassVar[int] = 2  # the vision tower's temporal patch

    def __init__(self) -> None:
        self._seen_grid: torch.Tensor | None = None

    def attach(self, base: nn.Module) -> list:
        # `generate` encodes the video before the prefill and drops `video_grid_thw` from what the forward gets:
        # remember the grid the vision tower was called with.
        return [base.visual.register_forward_pre_hook(self._record_grid, with_kwargs=True)]

    def _record_grid(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._seen_grid = kwargs.get("grid_thw")

    def encode_video(self, base: nn.Module, kwargs: dict) -> VideoTokens | None:
        grid = kwargs.get("video_grid_thw")
        encoded = encoder_output(kwargs, lambda: base.get_video_features(
            kwargs["pixel_values_videos"], grid, return_dict=True))
        if encoded is None:
            return None
        grid = self._seen_grid if grid is None else grid
        merge = base.config.vision_config.spatial_merge_size
        lengths = [len(features) for features in encoded.pooler_output]
        if grid is None or (grid.prod(-1) // merge**2).tolist() != lengths:
            raise ValueError(
                f"DyCoke needs the `video_grid_thw` of the video features (tokens per video {lengths}), got "
                f"{None if grid is None else grid.tolist()}."
            )
        frames = [features.view(t, h * w // merge**2, features.shape[-1])
                  for features, (t, h, w) in zip(encoded.pooler_output, grid.tolist(), strict=True)]
        return VideoTokens(frames, 0, encoded)

    def select(self, video: VideoTokens, kept: list[torch.Tensor]) -> Any:
        return type(video.output)(pooler_output=_per_video(video.output.pooler_output, kept))

    def merged_positions(
        self, base: nn.Module, kwargs: dict, original: dict, sources: torch.Tensor, removed: int,
        renumber: bool = True,
    ) -> None:
        positions = original.get("position_ids")
        if positions is None:
            parameters = inspect.signature(base.get_rope_index).parameters
            positions, deltas = base.get_rope_index(
                **{name: original.get(name) for name in _ROPE_INPUTS if name in parameters})
            # Decode steps without position ids count from the (shorter) cache plus this offset: keep them original.
            base.rope_deltas = deltas + removed
        text_row = None
        if positions.shape[0] == 4:  # generate's layout: a 1-D text row, then (t, h, w)
            text_row, positions = positions[:1], positions[1:]
        kept = positions.gather(2, sources[None].expand(positions.shape[0], -1, -1))
        if text_row is not None:
            text = (contiguous_positions(kwargs.get("attention_mask"), sources)[None].to(kept.dtype) if renumber
                    else text_row.gather(2, sources[None]))
            kept = torch.cat([text, kept])
        kwargs["position_ids"] = kept

    def decode_positions(self, kwargs: dict, removed: int, past: int, renumber: bool = True) -> None:
        positions = kwargs.get("position_ids")
        if renumber and positions is not None and positions.dim() == 3 and positions.shape[0] == 4:
            positions = positions.clone()
            positions[0] -= removed  # the (t, h, w) rows continue the original numbering
            kwargs["position_ids"] = positions


def _per_video(features: tuple[torch.Tensor, ...], kept: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return tuple(video[index.to(video.device)] for video, index in zip(features, kept, strict=True))


def qwen_tokenizer():
    """The tiny models' tokenizer with the Qwen-VL special tokens."""
    from lightning_prune.dycoke.families.tiny import byte_tokenizer

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
    return byte_tokenizer(specials, "<|image_pad|>", "<|video_pad|>")


def special_ids(tokenizer) -> dict[str, int]:
    """The token ids a Qwen-VL config names."""
    ids = tokenizer.convert_tokens_to_ids
    return {"image_token_id": ids("<|image_pad|>"), "video_token_id": ids("<|video_pad|>"),
            "vision_start_token_id": ids("<|vision_start|>"), "vision_end_token_id": ids("<|vision_end|>")}


def token_ids(tokenizer) -> dict[str, int]:
    """The text config's begin / end / padding ids, from the tiny tokenizer (the defaults are the real vocabulary's)."""
    return {"bos_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}
