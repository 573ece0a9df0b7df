"""Install DyCoke on a video LLM through transformers' public extension points, and remove it again.

Two pieces, no model file forked, the family's specifics behind a `FamilyAdapter` (`lightning_prune.dycoke.families`):

1. A forward pre-hook on the family's base model (e.g. `LlavaOnevisionModel`, `Qwen2_5_VLModel`). At the prefill
   (empty cache) it applies temporal token merging to the video features (which `generate` passes as
   `mm_encoder_outputs`, or which the adapter computes from `pixel_values_videos`), drops the merged video
   placeholders from `input_ids`, the 2-D `attention_mask` (and `mm_token_type_ids`), and lets the adapter assign
   positions: the LLM sees a shorter prompt. At each decode step it maps `generate`'s bookkeeping (mask and positions,
   which still count the merged tokens) onto that shorter sequence and passes the `DecodePruning` state down to the
   attention functions as the `dycoke` keyword.
2. The text model's attention implementation is switched to `dycoke_sdpa` / `dycoke_eager` (see `attention.py`).

`remove()` undoes both; the model then behaves exactly as before. Verified with transformers 5.24 (`cache` keyword).
Supported: batches of any size (left or right padding), one video per sample, SDPA or eager attention, greedy or
sampled decoding. Refused with an error: other attention implementations (flash attention), multi-token decode steps
(assisted or chunked generation), prompts given as `inputs_embeds` (the video tokens cannot be found).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from torch import nn

from lightning_prune._checks import int_problems
from lightning_prune.dycoke.attention import STATE_KWARG, WRAPPED_IMPLEMENTATIONS, register_attention_functions
from lightning_prune.dycoke.families import family_of, get_family
from lightning_prune.dycoke.families.base import positions_problems
from lightning_prune.dycoke.kv_pruning import SCORE_DTYPES, DecodePruning
from lightning_prune.dycoke.ttm import ttm_keep_positions
from lightning_prune.dycoke.variant import Variant


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
        score_dtype: dtype of the decode step's attention row, head mean and cosine: `model` (as published: float16
            under a float16 model) or `float32`; None: the variant's default (`official`: `model`, `refined`:
            `float32`).
        carry_state_across_samples: keep the last decode step's attention vector from one generation to the next,
            as the published model does across a run (reproduces published runs for batch 1 in dataset order); False
            (default): every generation starts afresh.
        positions: the merged prompt's position ids. `published` (default): as the published code, the shorter
            prompt is numbered as if the dropped tokens had never been there (1-D RoPE families renumber every token
            after the first dropped one; the Qwen-VL families keep their (t, h, w) ids). `original`: every kept token
            keeps the position it had in the whole prompt and decoding continues the whole prompt's numbering, as
            FastV's kept tokens do.

    K = 0 turns merging off in both variants (the published code turns DyCoke off as a whole instead; run at K = 0 it
    would still reorder tokens and drop an odd last frame), so K = 0 and P = 0 reproduce the model without DyCoke.
    """

    merging_ratio: float = 0.7
    prune_layer: int = 3
    decode_prune_ratio: float = 0.8
    window: int = 4
    reuse_threshold: float | None = 0.9
    variant: str = "official"
    score_dtype: str | None = None
    carry_state_across_samples: bool = False
    positions: str = "published"

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.merging_ratio < 1.0:
            problems.append(f"`merging_ratio` must be in [0, 1), got {self.merging_ratio}.")
        problems += int_problems("prune_layer", self.prune_layer, 1)
        if not 0.0 <= self.decode_prune_ratio < 1.0:
            problems.append(f"`decode_prune_ratio` must be in [0, 1), got {self.decode_prune_ratio}.")
        problems += int_problems("window", self.window, 1)
        if self.reuse_threshold is not None and not -1.0 <= self.reuse_threshold <= 1.0:
            problems.append(f"`reuse_threshold` must be in [-1, 1] or None, got {self.reuse_threshold}.")
        variant_problem = Variant.problem(self.variant)
        problems.append(variant_problem or Variant(self.variant).window_problem(self.window))
        if self.score_dtype is not None and self.score_dtype not in SCORE_DTYPES:
            problems.append(f"`score_dtype` must be one of {list(SCORE_DTYPES)} or None, got {self.score_dtype!r}.")
        if not isinstance(self.carry_state_across_samples, bool):
            problems.append("`carry_state_across_samples` must be true or false, "
                            f"got {self.carry_state_across_samples!r}.")
        problems += positions_problems(self.positions)
        problems = [problem for problem in problems if problem is not None]
        if problems:
            raise ValueError(" ".join(problems))

    @property
    def rules(self) -> Variant:
        """The variant as the object that owns its rules (`variant` itself stays the name, as given)."""
        return Variant(self.variant)


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


class DyCokeHooks:
    """DyCoke on one video LLM; `install()` / `remove()` or use it as a context manager.

    Args:
        model: a module containing a supported family's base model (e.g. `LlavaOnevisionForConditionalGeneration`).
        settings: DyCoke's knobs.
        profile: time DyCoke's own decode-step work (`GenerationStats.overhead_s`).
        family: the family's registry name; None finds it from the model's classes.
    """

    def __init__(
        self,
        model: nn.Module,
        settings: DyCokeSettings | None = None,
        profile: bool = False,
        family: str | None = None,
    ):
        self.settings = settings or DyCokeSettings()
        if family is None:
            self.family, self.base = family_of(model)
        else:
            self.family = get_family(family)
            self.base = self.family.find_base(model)
            if self.base is None:
                raise TypeError(f"`family` {family!r} does not match the model: no "
                                f"{self.family.base_class.partition(':')[2]} inside {type(model).__name__}.")
        text_config = self.base.config.text_config
        num_layers = text_config.num_hidden_layers
        if self.settings.prune_layer >= num_layers:
            raise ValueError(
                f"`prune_layer` must be below the LLM's {num_layers} layers (1 to {num_layers - 1}), "
                f"got {self.settings.prune_layer}."
            )
        self._original_attention = self._text_attention()
        self.video_token_id = self.family.video_token_id(self.base)
        self.pruning = DecodePruning(
            self.settings.prune_layer, self.settings.decode_prune_ratio, self.settings.reuse_threshold, profile,
            self.settings.variant, self.settings.score_dtype, self.settings.carry_state_across_samples,
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
        self._family_handles = self.family.attach(self.base)
        return self

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
            for handle in self._family_handles:
                handle.remove()
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
                f"got {implementation!r} (flash attention returns no attention weights and cannot take the gathered "
                "cache). Load the model with `attn_implementation='sdpa'`."
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

    def _prefill(self, module: nn.Module, kwargs: dict) -> None:
        self._sync_current()
        self.pruning.reset()
        self._merged = self._current = None
        has_video = (kwargs.get("mm_encoder_outputs") or {}).get(self.family.encoder_key) is not None
        if not has_video and kwargs.get(self.family.pixel_key) is None:
            return  # no video: nothing to do
        input_ids = kwargs.get("input_ids")
        if input_ids is None:
            raise ValueError("DyCoke needs `input_ids` (with the video placeholder tokens), got `inputs_embeds`.")
        if self.settings.carry_state_across_samples and input_ids.shape[0] != 1:
            raise ValueError("`carry_state_across_samples` needs batches of 1 sample (the published runs, in dataset "
                             f"order), got a batch of {input_ids.shape[0]}; set the batch size to 1 or turn it off.")
        video = self.family.encode_video(module, kwargs)
        batch, video_length = input_ids.shape[0], video.length
        is_video = input_ids == self.video_token_id
        if len(video.frames) != batch or not bool((is_video.sum(dim=1) == video_length).all()):
            raise ValueError(
                f"Every prompt must hold {video_length} video tokens (one video per sample), "
                f"got {is_video.sum(dim=1).tolist()}."
            )
        if any(frames.shape[:2] != video.frames[0].shape[:2] for frames in video.frames):
            raise ValueError(
                "Every video in a batch must have the same frames and tokens per frame, got (F, N) = "
                f"{[tuple(frames.shape[:2]) for frames in video.frames]}."
            )
        original = dict(kwargs)
        original_length = input_ids.shape[1]
        trailing = torch.arange(video_length - video.trailing, video_length, device=input_ids.device)
        if self.settings.merging_ratio > 0 and video.num_frames > 1:
            kept = [torch.cat([self._merge(frames).to(input_ids.device), trailing]) for frames in video.frames]
        else:
            kept = [torch.arange(video_length, device=input_ids.device)] * batch
        kwargs["mm_encoder_outputs"] = {**(kwargs.get("mm_encoder_outputs") or {}),
                                        self.family.encoder_key: self.family.select(video, kept)}
        kwargs[self.family.pixel_key] = None
        kept_count = len(kept[0])
        if kept_count < video_length:
            kept_video = is_video.nonzero()[:, 1].view(batch, video_length).gather(1, torch.stack(kept))
            keep = ~is_video
            keep.scatter_(1, kept_video, True)
            columns = keep.nonzero()[:, 1].view(batch, -1)
            # The i-th video slot left holds the i-th kept token (merged order): where that token came from.
            sources = columns.clone()
            sources[is_video.gather(1, columns)] = kept_video.flatten()
            self._merged = _MergedPrompt(original_length, columns)
            self._shorten_prompt(module, kwargs, original, sources)
        input_ids = kwargs["input_ids"]
        visual_positions = (input_ids == self.video_token_id).nonzero()[:, 1].view(batch, -1)
        if self.settings.rules.published:
            # As published: neither the last frame token nor the tokens after the frames (the newline) are candidates.
            visual_positions = visual_positions[:, : kept_count - video.trailing - 1]
        self.pruning.start(visual_positions, input_ids.shape[1])
        self._current = GenerationStats(
            batch_size=batch,
            visual_tokens_before=video_length,
            visual_tokens_after=kept_count,
            prompt_tokens_before=original_length,
            prompt_tokens_after=input_ids.shape[1],
        )
        self.stats.append(self._current)

    def _merge(self, frames: torch.Tensor) -> torch.Tensor:
        """`[M]` kept positions among one sample's frame tokens, in merged-sequence order."""
        return ttm_keep_positions(frames, self.settings.merging_ratio, self.settings.window, self.settings.variant)

    def _shorten_prompt(self, module: nn.Module, kwargs: dict, original: dict, sources: torch.Tensor) -> None:
        columns = self._merged.kept_columns
        kwargs["input_ids"] = kwargs["input_ids"].gather(1, columns)
        if kwargs.get("mm_token_type_ids") is not None:
            kwargs["mm_token_type_ids"] = kwargs["mm_token_type_ids"].gather(1, columns)
        mask = kwargs.get("attention_mask")
        if mask is not None:
            if not (isinstance(mask, torch.Tensor) and mask.dim() == 2):
                raise ValueError("DyCoke needs a 2-D `attention_mask` [batch, sequence] (or none).")
            kwargs["attention_mask"] = mask.gather(1, columns)
        self.family.merged_positions(module, kwargs, original, sources, self._merged.removed,
                                     renumber=self.settings.positions == "published")

    def _decode(self, kwargs: dict, past: int) -> None:
        tokens = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        if tokens is not None and tokens.shape[1] != 1:
            raise ValueError(
                f"DyCoke decodes one token per step, got {tokens.shape[1]} tokens after {past} cached "
                "(assisted or chunked generation is not supported)."
            )
        if self._merged is not None:
            removed = self._merged.removed
            self.family.decode_positions(kwargs, removed, past, renumber=self.settings.positions == "published")
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

