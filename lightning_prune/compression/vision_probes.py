"""Vision-tower probes: what VisionZip reads inside each family's vision tower, aligned with the frame tokens.

The only place of the compression package that knows vision-tower internals (the family adapters know the rest).
A probe hooks the tower (public forward hooks), and `take(video)` returns per sample `scores [F, N]` and
`keys [F, N, d]` for the frame tokens the adapter produced:

- `ClipLikeProbe` (LLaVA-NeXT-Video's CLIP, LLaVA-OneVision's SigLIP): the feature layer's query and key projections
  (the layer whose output `vision_feature_layer` selects); `cls`: the CLS row of its attention summed over the heads,
  `mean_query`: its attention averaged over the heads and all queries; keys averaged over the heads. Both are then
  pooled exactly like the features (the model's own `vision_resampler` / `apply_pooling`).
- `QwenMergeGroupProbe` (Qwen2.5-VL, Qwen3-VL): the last vision block's attention (after the vision RoPE, within each
  frame as its `cu_seqlens` says), averaged over the heads and summed over the queries, and its keys averaged over
  the heads; both averaged per merge group of 2 x 2 patches and put back from window order (Qwen2.5-VL).
- `InternViTClsProbe` (InternVL's InternViT): the published `cls` rule on the feature layer (CLS row of its
  attention summed over the heads, keys averaged over the heads, CLS dropped), then averaged over the patches of
  each pixel-shuffle group (2 x 2 at `downsample_ratio` 0.5) as the adapter's `patch_groups` forms them.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from lightning_prune.dycoke.families.base import FamilyAdapter, VideoTokens


def make_probe(base: nn.Module, family: FamilyAdapter, scoring: str):
    if family.name in ("llava_next_video", "llava_onevision"):
        return ClipLikeProbe(base, family.name, scoring)
    if family.name == "internvl":
        return InternViTClsProbe(base, family)
    return QwenMergeGroupProbe(base)


class ClipLikeProbe:
    def __init__(self, base: nn.Module, family: str, scoring: str):
        self.base, self.family, self.scoring = base, family, scoring
        layers = base.vision_tower.encoder.layers
        feature_layer = base.config.vision_feature_layer
        if not isinstance(feature_layer, int):
            raise ValueError(f"VisionZip needs one `vision_feature_layer`, got {feature_layer!r}.")
        # hidden_states[h] is the output of layer h - 1 (h > 0), and of layer len(layers) + h for h < 0
        self.layer = layers[feature_layer - 1 if feature_layer > 0 else len(layers) + feature_layer]
        if family == "llava_next_video" and base.config.spatial_pool_mode == "conv":
            raise ValueError("VisionZip pools scores like the features: `spatial_pool_mode` must be 'average' or "
                             "'max', got 'conv'.")
        self._captured: dict[str, torch.Tensor] = {}

    def attach(self) -> list:
        attention = self.layer.self_attn
        return [attention.q_proj.register_forward_hook(lambda m, a, out: self._captured.__setitem__("q", out)),
                attention.k_proj.register_forward_hook(lambda m, a, out: self._captured.__setitem__("k", out))]

    def take(self, video: VideoTokens) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if "q" not in self._captured:
            raise RuntimeError("VisionZip saw no vision-tower pass for this prefill (the video features were given "
                               "precomputed from elsewhere).")
        attention = self.layer.self_attn
        query, key = self._captured.pop("q").float(), self._captured.pop("k").float()
        frames, length, _ = query.shape
        heads = attention.num_heads
        query = query.view(frames, length, heads, -1).transpose(1, 2)
        key = key.view(frames, length, heads, -1).transpose(1, 2)
        if self.scoring == "cls":
            weights = (query[:, :, :1] @ key.transpose(-1, -2) * attention.scale).softmax(-1)  # [BF, H, 1, S]
            scores, keys = weights[:, :, 0, 1:].sum(dim=1), key.mean(dim=1)[:, 1:]
        else:
            weights = (query @ key.transpose(-1, -2) * attention.scale).softmax(-1)  # [BF, H, S, S]
            scores, keys = weights.mean(dim=1).mean(dim=1), key.mean(dim=1)
            if self.family == "llava_next_video":  # the CLS is no video token there
                scores, keys = scores[:, 1:], keys[:, 1:]
        pool = self.base.vision_resampler if self.family == "llava_next_video" else self.base.apply_pooling
        scores, keys = pool(scores[..., None])[..., 0], pool(keys)
        count = len(video.frames)
        return (list(scores.view(count, video.num_frames, video.tokens_per_frame)),
                list(keys.reshape(count, video.num_frames, video.tokens_per_frame, -1)))


class InternViTClsProbe:
    def __init__(self, base: nn.Module, family: FamilyAdapter):
        self.base, self.family = base, family
        layers = base.vision_tower.encoder.layer
        feature_layer = base.config.vision_feature_layer
        if not isinstance(feature_layer, int):
            raise ValueError(f"VisionZip needs one `vision_feature_layer`, got {feature_layer!r}.")
        if base.config.vision_feature_select_strategy != "default":
            raise ValueError("VisionZip scores InternVL's tokens by the CLS, which the features must drop: "
                             "`vision_feature_select_strategy` must be 'default', got "
                             f"{base.config.vision_feature_select_strategy!r}.")
        # hidden_states[h] is the output of layer h - 1 (h > 0), and of layer len(layers) + h for h < 0
        self.attention = layers[feature_layer - 1 if feature_layer > 0 else len(layers) + feature_layer].attention
        self._captured: dict[str, torch.Tensor] = {}

    def attach(self) -> list:
        attention = self.attention  # q / k after their (optional) RMS norm: what the attention multiplies
        return [attention.q_norm.register_forward_hook(lambda m, a, out: self._captured.__setitem__("q", out)),
                attention.k_norm.register_forward_hook(lambda m, a, out: self._captured.__setitem__("k", out))]

    def take(self, video: VideoTokens) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if "q" not in self._captured:
            raise RuntimeError("VisionZip saw no vision-tower pass for this prefill (the video features were given "
                               "precomputed from elsewhere).")
        attention = self.attention
        query, key = self._captured.pop("q").float(), self._captured.pop("k").float()
        frames, length, _ = query.shape
        query = query.view(frames, length, attention.num_heads, -1).transpose(1, 2)
        key = key.view(frames, length, attention.num_heads, -1).transpose(1, 2)
        weights = (query[:, :, :1] @ key.transpose(-1, -2) * attention.scale).softmax(-1)  # [BF, H, 1, S]
        scores, keys = weights[:, :, 0, 1:].sum(dim=1), key.mean(dim=1)[:, 1:]
        scores = self.family.patch_groups(self.base, scores[..., None]).mean(dim=2)[..., 0]  # [BF, N]
        keys = self.family.patch_groups(self.base, keys).mean(dim=2)  # [BF, N, d]
        count = len(video.frames)
        return (list(scores.view(count, video.num_frames, video.tokens_per_frame)),
                list(keys.reshape(count, video.num_frames, video.tokens_per_frame, -1)))


class QwenMergeGroupProbe:
    def __init__(self, base: nn.Module):
        self.visual = base.visual
        self.block = base.visual.blocks[-1].attn
        self._captured: dict = {}

    def attach(self) -> list:
        def on_visual(module, args, kwargs):
            self._captured["grid"] = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)

        def on_block(module, args, kwargs):
            self._captured["hidden"] = kwargs.get("hidden_states", args[0] if args else None)
            self._captured["cu_seqlens"] = kwargs["cu_seqlens"]
            self._captured["rope"] = kwargs["position_embeddings"]

        return [self.visual.register_forward_pre_hook(on_visual, with_kwargs=True),
                self.block.register_forward_pre_hook(on_block, with_kwargs=True)]

    def take(self, video: VideoTokens) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if "hidden" not in self._captured:
            raise RuntimeError("VisionZip saw no vision-tower pass for this prefill.")
        captured, self._captured = self._captured, {}
        attention = self.block
        hidden = captured["hidden"]
        length = hidden.shape[0]
        query, key, _ = attention.qkv(hidden).reshape(length, 3, attention.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        cos, sin = captured["rope"]
        rotate = inspect.getmodule(type(attention)).apply_rotary_pos_emb_vision
        query, key = rotate(query, key, cos, sin)
        query, key = query.float().transpose(0, 1), key.float().transpose(0, 1)  # [H, S, d]
        received = torch.zeros(length, dtype=torch.float32, device=hidden.device)  # attention summed over queries
        bounds = captured["cu_seqlens"].tolist()
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            weights = (query[:, start:stop] @ key[:, start:stop].transpose(-1, -2) * attention.scaling).softmax(-1)
            received[start:stop] = weights.mean(dim=0).sum(dim=0)
        scores = received.view(length // 4, 4).mean(dim=-1)
        keys = key.view(key.shape[0], length // 4, 4, key.shape[-1]).mean(dim=2).mean(dim=0)  # [S / 4, d]
        order = self._reverse_window_order(captured["grid"], hidden.device)
        if order is not None:
            scores, keys = scores[order], keys[order]
        per_video = video.num_frames * video.tokens_per_frame
        return (list(scores.view(-1, video.num_frames, video.tokens_per_frame)[: len(video.frames)]),
                list(keys.view(-1, video.num_frames, video.tokens_per_frame, keys.shape[-1])[: len(video.frames)])
                if keys.shape[0] == per_video * len(video.frames) else _mismatch(keys.shape[0], per_video))

    def _reverse_window_order(self, grid, device) -> torch.Tensor | None:
        if not hasattr(self.visual, "window_size"):
            return None  # Qwen3-VL: no window attention, the blocks see the merge groups in order
        from transformers.vision_utils import get_vision_window_index

        window_index, _ = get_vision_window_index(grid, spatial_merge_size=self.visual.spatial_merge_size,
                                                  window_size=self.visual.window_size,
                                                  patch_size=self.visual.patch_size)
        return torch.argsort(window_index.to(device))


def _mismatch(found: int, per_video: int):
    raise ValueError(f"VisionZip's Qwen probe found {found} merged tokens, expected a multiple of {per_video}.")
