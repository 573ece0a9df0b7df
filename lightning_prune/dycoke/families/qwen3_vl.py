"""Qwen3-VL (transformers `Qwen3VLModel`, e.g. Qwen/Qwen3-VL-8B-Instruct).

- Video features: `get_video_features` (the ViT, 2x2 patches merged), one tensor per video, plus DeepStack features
  (`deepstack_features`: the same tokens from inner ViT layers, added to the first LLM layers' hidden states at the
  video positions); both are gathered with the same kept indices.
- Tokens per frame: `h * w / 4` per temporal patch of 2 input frames (see `mrope`).
- Separator / newline: each temporal patch is wrapped as `<t seconds><|vision_start|> ... <|vision_end|>`; the
  timestamps and the wrapping tokens are text and stay, only the video tokens between them are merged
  (`trailing = 0`). Timestamps come from the frames' fps (the tiny processor is given a nominal 1 fps).
- Positions: multimodal RoPE (interleaved sections), kept tokens keep their original (t, h, w) ids (see `mrope`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_prune.dycoke.families.base import VideoTokens
from lightning_prune.dycoke.families.mrope import (
    MultimodalRopeAdapter,
    _per_video,
    qwen_tokenizer,
    special_ids,
    token_ids,
)
from lightning_prune.dycoke.families.tiny import chat_template, finish, merge_config

# 4 LLM layers of width 64; a 2-block vision tower (DeepStack from block 0) with 4x4 patches: 32x32 frames give
# 16 tokens per temporal patch.
TINY_DEFAULTS: dict[str, Any] = {
    "text_config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 32768,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                            "mrope_interleaved": True},
    },
    "vision_config": {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "patch_size": 4,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 64,
        "deepstack_visual_indexes": [0],
    },
}


class Qwen3VLAdapter(MultimodalRopeAdapter):
    name = "qwen3_vl"
    model_types = ("qwen3_vl",)
    base_class = "transformers:Qwen3VLModel"
    generation_class = "transformers:Qwen3VLForConditionalGeneration"

    def select(self, video: VideoTokens, kept: list[torch.Tensor]) -> Any:
        output = video.output
        deepstack = [_per_video(layer, kept) for layer in (output.deepstack_features or [])]
        return type(output)(pooler_output=_per_video(output.pooler_output, kept), deepstack_features=deepstack)

    def processor_kwargs(self, videos: list) -> dict[str, Any]:
        # Qwen3-VL writes each temporal patch's timestamp into the prompt; sampled frames carry no fps: 1 fps.
        return {"video_metadata": [
            {"fps": 1.0, "total_num_frames": len(video), "frames_indices": list(range(len(video)))} for video in videos
        ]}

    def tiny_model(self, overrides: dict[str, Any], seed: int) -> tuple[nn.Module, Any]:
        from transformers import Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

        overrides = dict(overrides)
        merged = merge_config(TINY_DEFAULTS, overrides)
        vision = merged["vision_config"]
        side = merged.pop("frame_side", 8 * vision["patch_size"])  # the largest frame side kept as it is
        tokenizer = qwen_tokenizer()
        merged["text_config"] = {"vocab_size": len(tokenizer), **token_ids(tokenizer), **merged["text_config"]}
        config = Qwen3VLConfig(**merged, **special_ids(tokenizer))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = Qwen3VLForConditionalGeneration(config)
        patches = {"patch_size": vision["patch_size"], "merge_size": vision["spatial_merge_size"],
                   "temporal_patch_size": vision["temporal_patch_size"]}
        processor = Qwen3VLProcessor(
            image_processor=Qwen2VLImageProcessor(**patches),
            tokenizer=tokenizer,
            # Qwen3-VL bounds the pixels of the whole video: frames of `side` pixels stay as they are (up to 64).
            video_processor=Qwen3VLVideoProcessor(**patches, size={"shortest_edge": 2 * (8 * vision["patch_size"]) ** 2,
                                                                   "longest_edge": 64 * side * side},
                                                  do_sample_frames=False, cap_pixels_per_frame=False),
            chat_template=chat_template("<|video_pad|>"),
        )
        return finish(model, tokenizer), processor
