"""LLaVA-OneVision (transformers `LlavaOnevisionModel`), the paper's model.

- Video features: `get_video_features` (SigLIP, then the patch grid pooled 2x bilinearly), `[B, F * N + 1, D]`.
- Tokens per frame: `ceil(g / 2) ** 2` for a g x g patch grid (384 / 14 -> 27 -> 14 x 14 = 196).
- Separator / newline: one `image_newline` token after all frames (a video token: `trailing = 1`).
- Positions: 1-D RoPE; the merged prompt is renumbered 0, 1, ... (as the published code builds it).
- Published prompt: the `qwen_1_5` conversation of KD-TAO/DyCoke (`llava/conversation.py`, ChatML with a system
  turn), the video's image token first in the user turn, then a newline and the question
  (`lmms_eval/models/llava_onevision.py`); the Hugging Face chat template has no system turn.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from lightning_prune.dycoke.families.base import FamilyAdapter, VideoTokens, encoder_output
from lightning_prune.dycoke.families.tiny import byte_tokenizer, chat_template, finish, merge_config
from lightning_prune.dycoke.kv_pruning import gather_positions

# 4 LLM layers of width 64, a 1-layer vision tower on 28x28 frames (7x7 patches, pooled to 16 tokens per frame).
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
        "model_type": "siglip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 28,
        "patch_size": 4,
        "vision_use_head": False,
    },
}


class LlavaOnevisionAdapter(FamilyAdapter):
    name = "llava_onevision"
    model_types = ("llava_onevision",)
    base_class = "transformers:LlavaOnevisionModel"
    generation_class = "transformers:LlavaOnevisionForConditionalGeneration"
    trailing = 1  # the newline token after the frames
    published_conversation = "qwen_1_5"

    def published_prompt(self, text: str, video_token: str) -> str:
        # ChatML: the system turn, then role + "\n" + message + separator + "\n" per turn, an open assistant turn.
        system = "<|im_start|>system\nYou are a helpful assistant."
        return (f"{system}<|im_end|>\n<|im_start|>user\n{video_token}\n{text}<|im_end|>\n"
                "<|im_start|>assistant\n")

    def tokens_per_frame(self, base: nn.Module) -> int:
        vision = base.config.vision_config
        grid = vision.image_size // vision.patch_size
        return ((grid + 1) // 2) ** 2

    def encode_video(self, base: nn.Module, kwargs: dict) -> VideoTokens | None:
        encoded = encoder_output(kwargs, lambda: base.get_video_features(
            pixel_values_videos=kwargs["pixel_values_videos"],
            vision_feature_layer=kwargs.get("vision_feature_layer"),
            vision_feature_select_strategy=kwargs.get("vision_feature_select_strategy"),
            return_dict=True,
        ))
        if encoded is None:
            return None
        features = encoded.pooler_output  # [B, F * N + trailing, D]
        per_frame = self.tokens_per_frame(base)
        num_frames = (features.shape[1] - self.trailing) // per_frame
        if num_frames < 1 or num_frames * per_frame + self.trailing != features.shape[1]:
            raise ValueError(
                f"Expected F * {per_frame} + {self.trailing} video tokens per sample, got {features.shape[1]}."
            )
        frames = [sample[: num_frames * per_frame].view(num_frames, per_frame, -1) for sample in features]
        return VideoTokens(frames, self.trailing, encoded)

    def select(self, video: VideoTokens, kept: list[torch.Tensor]) -> Any:
        features = gather_positions(video.output.pooler_output, torch.stack(kept), 1)
        return BaseModelOutputWithPooling(pooler_output=features)

    def tiny_model(self, overrides: dict[str, Any], seed: int) -> tuple[nn.Module, Any]:
        from transformers import (
            LlavaOnevisionConfig,
            LlavaOnevisionForConditionalGeneration,
            LlavaOnevisionImageProcessor,
            LlavaOnevisionProcessor,
            LlavaOnevisionVideoProcessor,
        )

        merged = merge_config(TINY_DEFAULTS, overrides)
        tokenizer = byte_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"],
                                   "<image>", "<video>")
        side = merged["vision_config"]["image_size"]
        merged["text_config"].setdefault("vocab_size", len(tokenizer))
        config = LlavaOnevisionConfig(
            **merged,
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
            image_grid_pinpoints=[[side, side]],
        )
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = LlavaOnevisionForConditionalGeneration(config)
        size = {"height": side, "width": side}
        processor = LlavaOnevisionProcessor(
            image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=[[side, side]]),
            tokenizer=tokenizer,
            video_processor=LlavaOnevisionVideoProcessor(size=size),
            num_image_tokens=(side // merged["vision_config"]["patch_size"]) ** 2,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            chat_template=chat_template("<video>\n"),
        )
        return finish(model, tokenizer), processor
