"""LLaVA-NeXT-Video (transformers `LlavaNextVideoModel`, e.g. llava-hf/LLaVA-NeXT-Video-7B-hf).

- Video features: `get_video_features` (CLIP, the CLS token dropped, the patch grid average-pooled with stride
  `spatial_pool_stride` = 2, then the projector), `[B, F * N, D]`.
- Tokens per frame: `(g // stride) ** 2` for a g x g patch grid (336 / 14 -> 24 -> 12 x 12 = 144).
- Separator / newline: none; a video is its frames' tokens back to back (`trailing = 0`), so the official decode
  candidates are every merged token but the last.
- Positions: 1-D RoPE; the merged prompt is renumbered 0, 1, ... (the base class's default).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from lightning_prune.dycoke.families.base import FamilyAdapter, VideoTokens, encoder_output
from lightning_prune.dycoke.families.tiny import byte_tokenizer, chat_template, finish, merge_config
from lightning_prune.dycoke.kv_pruning import gather_positions

# 4 LLM layers of width 64 (Llama, as the 7B's Vicuna), a 2-layer CLIP tower on 32x32 frames: 8x8 patches, pooled to
# 4x4 = 16 tokens per frame.
TINY_DEFAULTS: dict[str, Any] = {
    "text_config": {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
    },
    "vision_config": {
        "model_type": "clip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 4,
        "projection_dim": 32,
    },
}


class LlavaNextVideoAdapter(FamilyAdapter):
    name = "llava_next_video"
    model_types = ("llava_next_video",)
    base_class = "transformers:LlavaNextVideoModel"
    generation_class = "transformers:LlavaNextVideoForConditionalGeneration"

    def tokens_per_frame(self, base: nn.Module) -> int:
        vision = base.config.vision_config
        return (vision.image_size // vision.patch_size // base.config.spatial_pool_stride) ** 2

    def encode_video(self, base: nn.Module, kwargs: dict) -> VideoTokens | None:
        encoded = encoder_output(kwargs, lambda: base.get_video_features(
            kwargs["pixel_values_videos"],
            vision_feature_layer=kwargs.get("vision_feature_layer"),
            vision_feature_select_strategy=kwargs.get("vision_feature_select_strategy"),
            return_dict=True,
        ))
        if encoded is None:
            return None
        features = encoded.pooler_output  # [B, F * N, D]
        per_frame = self.tokens_per_frame(base)
        if features.shape[1] % per_frame:
            raise ValueError(f"Expected F * {per_frame} video tokens per sample, got {features.shape[1]}.")
        frames = [sample.view(-1, per_frame, sample.shape[-1]) for sample in features]
        return VideoTokens(frames, 0, encoded)

    def select(self, video: VideoTokens, kept: list[torch.Tensor]) -> Any:
        features = gather_positions(video.output.pooler_output, torch.stack(kept), 1)
        return BaseModelOutputWithPooling(pooler_output=features)

    def tiny_model(self, overrides: dict[str, Any], seed: int) -> tuple[nn.Module, Any]:
        from transformers import (
            LlavaNextImageProcessor,
            LlavaNextVideoConfig,
            LlavaNextVideoForConditionalGeneration,
            LlavaNextVideoProcessor,
            LlavaNextVideoVideoProcessor,
        )

        merged = merge_config(TINY_DEFAULTS, overrides)
        tokenizer = byte_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"],
                                   "<image>", "<video>")
        vision = merged["vision_config"]
        side = vision["image_size"]
        merged["text_config"].setdefault("vocab_size", len(tokenizer))
        config = LlavaNextVideoConfig(
            **merged,
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
            image_grid_pinpoints=[[side, side]],
        )
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = LlavaNextVideoForConditionalGeneration(config)
        size, crop = {"shortest_edge": side}, {"height": side, "width": side}
        processor = LlavaNextVideoProcessor(
            video_processor=LlavaNextVideoVideoProcessor(size=size, crop_size=crop),
            image_processor=LlavaNextImageProcessor(size=size, crop_size=crop, image_grid_pinpoints=[[side, side]]),
            tokenizer=tokenizer,
            patch_size=vision["patch_size"],
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            chat_template=chat_template("<video>\n"),
        )
        return finish(model, tokenizer), processor
