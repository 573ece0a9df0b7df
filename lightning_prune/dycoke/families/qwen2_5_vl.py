"""Qwen2.5-VL (transformers `Qwen2_5_VLModel`, e.g. Qwen/Qwen2.5-VL-7B-Instruct).

- Video features: `get_video_features` (the window-attention ViT, 2x2 patches merged), one tensor per video.
- Tokens per frame: `h * w / 4` per temporal patch of 2 input frames (see `mrope`).
- Separator / newline: `<|vision_start|>` and `<|vision_end|>` around the video are text tokens; no video token
  follows the frames (`trailing = 0`).
- Positions: multimodal RoPE, kept tokens keep their original (t, h, w) ids (see `mrope`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_prune.dycoke.families.mrope import MultimodalRopeAdapter, qwen_tokenizer, special_ids, token_ids
from lightning_prune.dycoke.families.tiny import chat_template, finish, merge_config

# 4 LLM layers of width 64; a 1-block vision tower with 4x4 patches: 32x32 frames give 16 tokens per temporal patch.
TINY_DEFAULTS: dict[str, Any] = {
    "text_config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    },
    "vision_config": {
        "depth": 1,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "patch_size": 4,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 16,
        "fullatt_block_indexes": [0],
    },
}


class Qwen2_5_VLAdapter(MultimodalRopeAdapter):
    name = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    base_class = "transformers:Qwen2_5_VLModel"
    generation_class = "transformers:Qwen2_5_VLForConditionalGeneration"

    def tiny_model(self, overrides: dict[str, Any], seed: int) -> tuple[nn.Module, Any]:
        from transformers import (
            Qwen2_5_VLConfig,
            Qwen2_5_VLForConditionalGeneration,
            Qwen2_5_VLProcessor,
            Qwen2VLImageProcessor,
            Qwen2VLVideoProcessor,
        )

        overrides = dict(overrides)
        merged = merge_config(TINY_DEFAULTS, overrides)
        vision = merged["vision_config"]
        side = merged.pop("frame_side", 8 * vision["patch_size"])  # frames are resized to side x side pixels
        tokenizer = qwen_tokenizer()
        merged["text_config"] = {"vocab_size": len(tokenizer), **token_ids(tokenizer), **merged["text_config"]}
        config = Qwen2_5_VLConfig(**merged, **special_ids(tokenizer))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = Qwen2_5_VLForConditionalGeneration(config)
        patches = {"patch_size": vision["patch_size"], "merge_size": vision["spatial_merge_size"],
                   "temporal_patch_size": vision["temporal_patch_size"]}
        processor = Qwen2_5_VLProcessor(
            image_processor=Qwen2VLImageProcessor(**patches),
            tokenizer=tokenizer,
            video_processor=Qwen2VLVideoProcessor(**patches, size={"shortest_edge": side * side,
                                                                   "longest_edge": side * side},
                                                  do_sample_frames=False, cap_pixels_per_frame=False),
            chat_template=chat_template("<|vision_start|><|video_pad|><|vision_end|>"),
        )
        return finish(model, tokenizer), processor
