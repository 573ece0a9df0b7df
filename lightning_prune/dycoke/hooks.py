"""Install DyCoke on a LLaVA-OneVision model through transformers' public extension points, and remove it again.

Two pieces, no model file forked:

1. A forward pre-hook on `LlavaOnevisionModel` (keyword arguments). At the prefill (empty cache) it applies temporal
   token merging to the pooled video features (which `generate` passes as `mm_encoder_outputs`, or which it computes
   from `pixel_values_videos`), drops the merged video placeholders from `input_ids` and the 2-D `attention_mask`, and
   renumbers `position_ids`: the LLM sees a shorter prompt, as if the tokens had never been there. At each decode step
   it maps `generate`'s bookkeeping (mask and positions, which still count the merged tokens) onto that shorter
   sequence and passes the `DecodePruning` state down to the attention functions as the `dycoke` keyword.
2. The text model's attention implementation is switched to `dycoke_sdpa` / `dycoke_eager` (see `attention.py`).

`remove()` undoes both; the model then behaves exactly as before. Verified with transformers 5.24 (`cache` keyword).
Supported: batches of any size (left or right padding), SDPA or eager attention, greedy or sampled decoding.
Refused with an error: other attention implementations, multi-token decode steps (assisted or chunked generation),
prompts given as `inputs_embeds` (the video tokens cannot be found).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import LlavaOnevisionModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from lightning_prune.dycoke.attention import STATE_KWARG, WRAPPED_IMPLEMENTATIONS, register_attention_functions
from lightning_prune.dycoke.kv_pruning import DecodePruning, gather_positions
from lightning_prune.dycoke.ttm import VARIANTS, ttm_keep_positions


@dataclass(frozen=True)
class DyCokeSettings:
    """DyCoke's knobs (names as the callback's arguments).

    Attributes:
        merging_ratio: K in [0, 1), share of a merged frame's tokens dropped by temporal token merging.
        prune_layer: L >= 1, first LLM layer whose decode-step attention sees only the selected visual tokens.
        decode_prune_ratio: P in [0, 1), share of the visual tokens layers >= L skip at each decode step.
        window: frames per TTM window (>= 1).
        reuse_threshold: a decode step is *similar* to the previous one when the attention vectors' cosine
            similarity is at least this (in [-1, 1]); `None`: never.
        variant: `official` reproduces the published code (merged order, dropped frames, candidates, similar steps
            unpruned); `refined` is ours (spatial order, every window merged, similar steps reuse the selection).

    K = 0 turns merging off in both variants (the published code turns DyCoke off as a whole instead; run at K = 0 it
    would still reorder tokens and drop an odd last frame), so K = 0 and P = 0 reproduce the model without DyCoke.
    """

    merging_ratio: float = 0.7
    prune_layer: int = 3
    decode_prune_ratio: float = 0.8
    window: int = 4
    reuse_threshold: float | None = 0.9
    variant: str = "official"

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.merging_ratio < 1.0:
            problems.append(f"`merging_ratio` must be in [0, 1), got {self.merging_ratio}.")
        if isinstance(self.prune_layer, bool) or not isinstance(self.prune_layer, int) or self.prune_layer < 1:
            problems.append(f"`prune_layer` must be an integer >= 1, got {self.prune_layer!r}.")
        if not 0.0 <= self.decode_prune_ratio < 1.0:
            problems.append(f"`decode_prune_ratio` must be in [0, 1), got {self.decode_prune_ratio}.")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            problems.append(f"`window` must be an integer >= 1, got {self.window!r}.")
        if self.reuse_threshold is not None and not -1.0 <= self.reuse_threshold <= 1.0:
            problems.append(f"`reuse_threshold` must be in [-1, 1] or None, got {self.reuse_threshold}.")
        if self.variant not in VARIANTS:
            problems.append(f"`variant` must be one of {list(VARIANTS)}, got {self.variant!r}.")
        elif self.variant == "official" and self.window != 4:
            problems.append(f"`window` must be 4 with variant='official' (the published code's), got {self.window!r}.")
        if problems:
            raise ValueError(" ".join(problems))


@dataclass
class GenerationStats:
    """What DyCoke did to one generation (one prefill and its decode steps); counts are per sample.

    `attended_kv_lengths` is what layers >= L attend to at each decode step; `full_kv_lengths` what layers < L do.
    """

    batch_size: int
    visual_tokens_before: int
    visual_tokens_after: int
    prompt_tokens_before: int
    prompt_tokens_after: int
    full_kv_lengths: list[int] = field(default_factory=list)
    attended_kv_lengths: list[int] = field(default_factory=list)
    reused_steps: int = 0
    overhead_s: float = 0.0


@dataclass
class _MergedPrompt:
    original_length: int
    kept_columns: torch.Tensor  # [B, S'] positions of the kept prompt tokens in the original prompt

    @property
    def removed(self) -> int:
        return self.original_length - self.kept_columns.shape[1]


def find_llava_onevision(module: nn.Module) -> LlavaOnevisionModel:
    """The `LlavaOnevisionModel` inside `module` (itself, or the `.model` of a `...ForConditionalGeneration`)."""
    for candidate in module.modules():
        if isinstance(candidate, LlavaOnevisionModel):
            return candidate
    raise TypeError(
        f"DyCoke needs a module containing a transformers `LlavaOnevisionModel`, got {type(module).__name__}."
    )


class DyCokeHooks:
    """DyCoke on one LLaVA-OneVision model; `install()` / `remove()` or use it as a context manager.

    Args:
        model: a module containing a `LlavaOnevisionModel` (e.g. `LlavaOnevisionForConditionalGeneration`).
        settings: DyCoke's knobs.
        profile: time DyCoke's own decode-step work (`GenerationStats.overhead_s`).
    """

    def __init__(self, model: nn.Module, settings: DyCokeSettings | None = None, profile: bool = False):
        self.settings = settings or DyCokeSettings()
        self.base = find_llava_onevision(model)
        text_config = self.base.config.text_config
        num_layers = text_config.num_hidden_layers
        if self.settings.prune_layer >= num_layers:
            raise ValueError(
                f"`prune_layer` must be below the LLM's {num_layers} layers (1 to {num_layers - 1}), "
                f"got {self.settings.prune_layer}."
            )
        self._original_attention = self._text_attention()
        vision = self.base.config.vision_config
        grid = vision.image_size // vision.patch_size
        self.tokens_per_frame = ((grid + 1) // 2) ** 2  # LLaVA-OneVision pools the patch grid 2x (ceil)
        self.video_token_id = self.base.config.video_token_id
        self.pruning = DecodePruning(
            self.settings.prune_layer, self.settings.decode_prune_ratio, self.settings.reuse_threshold, profile,
            self.settings.variant,
        )
        self.stats: list[GenerationStats] = []
        self._forward_parameters = inspect.signature(self.base.forward)
        self._handle = None
        self._merged: _MergedPrompt | None = None
        self._current: GenerationStats | None = None

    @property
    def installed(self) -> bool:
        return self._handle is not None

    def install(self) -> DyCokeHooks:
        if self.installed:
            raise RuntimeError("DyCoke is already installed on this model.")
        self._original_attention = self._text_attention()  # it may have changed since __init__
        register_attention_functions()
        self.base.set_attn_implementation({"text_config": WRAPPED_IMPLEMENTATIONS[self._original_attention]})
        self._handle = self.base.register_forward_pre_hook(self._before_forward, with_kwargs=True)
        return self

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
            self.base.set_attn_implementation({"text_config": self._original_attention})
        self._sync_current()
        self.pruning.reset()
        self._merged = self._current = None

    def __enter__(self) -> DyCokeHooks:
        return self.install()

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def _text_attention(self) -> str:
        implementation = self.base.config.text_config._attn_implementation
        if implementation not in WRAPPED_IMPLEMENTATIONS:
            raise ValueError(
                f"DyCoke supports the text model's attention implementation {sorted(WRAPPED_IMPLEMENTATIONS)}, "
                f"got {implementation!r}. Load the model with `attn_implementation='sdpa'`."
            )
        return implementation

    def pop_stats(self) -> list[GenerationStats]:
        """Statistics of the generations since the last call (oldest first); call it between generations."""
        self._sync_current()
        stats, self.stats = self.stats, []
        return stats

    def _sync_current(self) -> None:
        if self._current is not None:
            self._current.reused_steps = self.pruning.reused_steps
            if self.pruning.attended_lengths:
                self._current.attended_kv_lengths = [round(n) for n in self.pruning.attended_lengths]
            self._current.overhead_s = self.pruning.overhead_s

    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            kwargs = dict(self._forward_parameters.bind_partial(*args, **kwargs).arguments)
            kwargs.update(kwargs.pop("kwargs", {}))
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if cache is not None else 0
        if past == 0:
            self._prefill(module, kwargs)
        elif self._current is not None:
            self._decode(kwargs, past)
        return (), kwargs

    def _prefill(self, module: LlavaOnevisionModel, kwargs: dict) -> None:
        self._sync_current()
        self.pruning.reset()
        self._merged = self._current = None
        encoded = dict(kwargs.get("mm_encoder_outputs") or {})
        pixels = kwargs.get("pixel_values_videos")
        if encoded.get("video") is None and pixels is None:
            return  # no video: nothing to do
        input_ids = kwargs.get("input_ids")
        if input_ids is None:
            raise ValueError("DyCoke needs `input_ids` (with the video placeholder tokens), got `inputs_embeds`.")
        if encoded.get("video") is None:
            encoded["video"] = module.get_video_features(
                pixel_values_videos=pixels,
                vision_feature_layer=kwargs.get("vision_feature_layer"),
                vision_feature_select_strategy=kwargs.get("vision_feature_select_strategy"),
                return_dict=True,
            )
        features = encoded["video"].pooler_output  # [B, F * N + 1, D]: frames, then one newline token
        batch, video_length = features.shape[:2]
        num_frames = (video_length - 1) // self.tokens_per_frame
        if num_frames * self.tokens_per_frame + 1 != video_length:
            raise ValueError(
                f"Expected F * {self.tokens_per_frame} + 1 video tokens per sample, got {video_length}."
            )
        is_video = input_ids == self.video_token_id
        if not bool((is_video.sum(dim=1) == video_length).all()):
            raise ValueError(
                f"Every prompt must hold {video_length} video tokens (one video per sample), "
                f"got {is_video.sum(dim=1).tolist()}."
            )
        original_length = input_ids.shape[1]
        if self.settings.merging_ratio > 0 and num_frames > 1:
            kept_video = self._merge_video_tokens(features, num_frames)  # [B, M + 1]
            features = gather_positions(features, kept_video, 1)
            video_positions = is_video.nonzero()[:, 1].view(batch, video_length)
            keep = ~is_video
            keep.scatter_(1, video_positions.gather(1, kept_video), True)
            self._merged = _MergedPrompt(original_length, keep.nonzero()[:, 1].view(batch, -1))
            self._shorten_prompt(kwargs)
        encoded["video"] = BaseModelOutputWithPooling(pooler_output=features)
        kwargs["mm_encoder_outputs"] = encoded
        kwargs["pixel_values_videos"] = None
        input_ids = kwargs["input_ids"]
        visual_positions = (input_ids == self.video_token_id).nonzero()[:, 1].view(batch, -1)
        if self.settings.variant == "official":
            visual_positions = visual_positions[:, :-2]  # as published: not the last frame token, not the newline
        self.pruning.start(visual_positions, input_ids.shape[1])
        self._current = GenerationStats(
            batch_size=batch,
            visual_tokens_before=video_length,
            visual_tokens_after=features.shape[1],
            prompt_tokens_before=original_length,
            prompt_tokens_after=input_ids.shape[1],
        )
        self.stats.append(self._current)

    def _merge_video_tokens(self, features: torch.Tensor, num_frames: int) -> torch.Tensor:
        """`[B, M + 1]` kept positions among the video tokens (TTM on the frames, the newline always kept)."""
        per_frame = self.tokens_per_frame
        newline = torch.tensor([num_frames * per_frame], device=features.device)
        kept = []
        for sample in features:
            frames = sample[: num_frames * per_frame].view(num_frames, per_frame, -1)
            positions = ttm_keep_positions(frames, self.settings.merging_ratio, self.settings.window,
                                           self.settings.variant)
            kept.append(torch.cat([positions.to(features.device), newline]))
        return torch.stack(kept)

    def _shorten_prompt(self, kwargs: dict) -> None:
        columns = self._merged.kept_columns
        kwargs["input_ids"] = kwargs["input_ids"].gather(1, columns)
        mask = kwargs.get("attention_mask")
        if mask is not None:
            if not (isinstance(mask, torch.Tensor) and mask.dim() == 2):
                raise ValueError("DyCoke needs a 2-D `attention_mask` [batch, sequence] (or none).")
            mask = mask.gather(1, columns)
            kwargs["attention_mask"] = mask
        if kwargs.get("position_ids") is not None:
            if mask is not None:
                positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
            else:
                positions = torch.arange(columns.shape[1], device=columns.device).expand(columns.shape[0], -1)
            kwargs["position_ids"] = positions

    def _decode(self, kwargs: dict, past: int) -> None:
        tokens = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        if tokens is not None and tokens.shape[1] != 1:
            raise ValueError(
                f"DyCoke decodes one token per step, got {tokens.shape[1]} tokens after {past} cached "
                "(assisted or chunked generation is not supported)."
            )
        if self._merged is not None:
            removed = self._merged.removed
            if kwargs.get("position_ids") is not None:
                kwargs["position_ids"] = kwargs["position_ids"] - removed
            mask = kwargs.get("attention_mask")
            if mask is not None:
                if mask.dim() != 2 or mask.shape[1] != past + 1 + removed:
                    raise ValueError(
                        f"Expected a 2-D decode `attention_mask` over {past + 1 + removed} tokens, "
                        f"got shape {tuple(mask.shape)}."
                    )
                prompt = self._merged.original_length
                kwargs["attention_mask"] = torch.cat([mask[:, :prompt].gather(1, self._merged.kept_columns),
                                                      mask[:, prompt:]], dim=1)
        full = past + 1
        self._current.full_kv_lengths.append(full)
        if self.pruning.active:
            kwargs[STATE_KWARG] = self.pruning  # the attended lengths are recorded by the scoring layer
        else:
            self._current.attended_kv_lengths.append(full)

