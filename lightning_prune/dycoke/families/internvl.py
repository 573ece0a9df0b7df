"""InternVL (transformers `InternVLModel`, e.g. OpenGVLab/InternVL3-8B-hf).

- Video features: InternVL encodes a video's frames as images: the processor stacks them into `pixel_values`
  and `get_image_features` (the InternViT, pixel shuffle 0.5, the projector) returns `[B * F, N, D]`, which
  `generate` passes as `mm_encoder_outputs["image"]` (`encoder_key` / `pixel_key` below).
- Tokens per frame: `(image_size / patch_size) ** 2 * downsample_ratio ** 2` (448 / 14 -> 32 x 32 -> 256).
- Separator / newline: the prompt wraps every frame as `FrameK: <img> ... </img>` followed by a newline; those are
  text tokens and stay, only the `<IMG_CONTEXT>` tokens between them are merged (`trailing = 0`).
- Positions: 1-D RoPE (Qwen2 / Qwen3 LLM); the merged prompt is renumbered 0, 1, ... (the base class's default).
- Published prompt: none (no published DyCoke code for InternVL): the processor's chat template.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from lightning_prune.dycoke.families.base import FamilyAdapter, VideoTokens, encoder_output
from lightning_prune.dycoke.families.tiny import byte_tokenizer, chat_template, finish, merge_config
from lightning_prune.dycoke.kv_pruning import gather_positions

# 4 Qwen2 layers of width 64; a 1-layer InternViT on 32x32 frames: 8x8 patches, pixel-shuffled to 4x4 = 16 tokens.
TINY_DEFAULTS: dict[str, Any] = {
    "text_config": {
        "model_type": "qwen2",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
    },
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 4,
    },
    "tie_word_embeddings": False,  # as the 8B checkpoint; tied random weights answer only newlines (empty answers)
}


def _side(value: Any) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


class InternVLAdapter(FamilyAdapter):
    name = "internvl"
    model_types = ("internvl",)
    base_class = "transformers:InternVLModel"
    generation_class = "transformers:InternVLForConditionalGeneration"
    encoder_key = "image"
    pixel_key = "pixel_values"

    def video_token_id(self, base: nn.Module) -> int:
        return base.config.image_token_id  # `<IMG_CONTEXT>`: each frame's tokens

    def tokens_per_frame(self, base: nn.Module) -> int:
        vision = base.config.vision_config
        grid = _side(vision.image_size) // _side(vision.patch_size)
        return int(grid * grid * base.config.downsample_ratio**2)

    def patch_groups(self, base: nn.Module, values: torch.Tensor) -> torch.Tensor:
        """`[F, P, C]` per-patch values (CLS dropped) -> `[F, N, G, C]`: the model's own pixel shuffle, so that token
        n's G = `1 / downsample_ratio ** 2` patches (a 2 x 2 block of the patch grid at 0.5) are exactly the ones
        whose channels it concatenates."""
        frames, patches, channels = values.shape
        side = math.isqrt(patches)
        ratio = base.config.downsample_ratio
        group = round(1 / ratio**2)
        if side * side != patches or abs(group * ratio**2 - 1) > 1e-6:
            raise ValueError(f"Expected a square patch grid and `downsample_ratio` 1 / integer, got {patches} "
                             f"patches and ratio {ratio}.")
        shuffled = base.pixel_shuffle(values.reshape(frames, side, side, channels), scale_factor=ratio)
        return shuffled.reshape(frames, -1, group, channels)

    def encode_video(self, base: nn.Module, kwargs: dict) -> VideoTokens | None:
        encoded = encoder_output(kwargs, lambda: base.get_image_features(
            pixel_values=kwargs["pixel_values"],
            vision_feature_layer=kwargs.get("vision_feature_layer"),
            vision_feature_select_strategy=kwargs.get("vision_feature_select_strategy"),
            return_dict=True,
        ), self.encoder_key, self.pixel_key)
        if encoded is None:
            return None
        features = encoded.pooler_output  # [B * F, N, D], frames of the samples one after another
        batch, per_frame = kwargs["input_ids"].shape[0], self.tokens_per_frame(base)
        if features.shape[1] != per_frame or features.shape[0] % batch:
            raise ValueError(
                f"Expected {per_frame} tokens per frame and the same frame count per sample (one video each, no "
                f"images), got features of shape {tuple(features.shape)} for {batch} samples."
            )
        frames = list(features.view(batch, -1, per_frame, features.shape[-1]))
        return VideoTokens(frames, 0, encoded)

    def select(self, video: VideoTokens, kept: list[torch.Tensor]) -> Any:
        features = torch.stack(video.frames).flatten(1, 2)  # [B, F * N, D]
        return BaseModelOutputWithPooling(pooler_output=gather_positions(features, torch.stack(kept), 1))

    def tiny_model(self, overrides: dict[str, Any], seed: int) -> tuple[nn.Module, Any]:
        from transformers import (
            GotOcr2ImageProcessor,
            InternVLConfig,
            InternVLForConditionalGeneration,
            InternVLProcessor,
        )
        from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

        merged = merge_config(TINY_DEFAULTS, overrides)
        tokenizer = byte_tokenizer(
            ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
            "<IMG_CONTEXT>", "<video>",
            {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>"},
        )
        vision = merged["vision_config"]
        side = _side(vision["image_size"])
        merged["text_config"].setdefault("vocab_size", len(tokenizer))
        config = InternVLConfig(**merged, image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"))
        per_frame = int((side // _side(vision["patch_size"])) ** 2 * config.downsample_ratio**2)
        config.image_seq_length = per_frame
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = InternVLForConditionalGeneration(config)
        size = {"height": side, "width": side}
        processor = InternVLProcessor(
            image_processor=GotOcr2ImageProcessor(size=size),
            tokenizer=tokenizer,
            video_processor=InternVLVideoProcessor(size=size, do_sample_frames=False),
            image_seq_length=per_frame,
            chat_template=chat_template("<video>\n"),
        )
        return finish(model, tokenizer), processor
