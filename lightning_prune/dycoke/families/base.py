"""What DyCoke needs to know about one family of video LLMs, and the defaults most families share.

A `FamilyAdapter` answers four questions for the family-agnostic hooks (`lightning_prune.dycoke.hooks`):

1. where the video features are produced (`encode_video`: the precomputed `mm_encoder_outputs["video"]` or the model's
   own `get_video_features`), and how kept tokens are put back (`select`);
2. how many tokens make one frame (`VideoTokens.frames`, `[F, N, D]` per sample);
3. the video tokens that are not frame tokens (`VideoTokens.trailing`: LLaVA-OneVision's newline after the frames),
   and the video placeholder token id; separators that are text tokens (Qwen3-VL's timestamps) stay text;
4. how positions are assigned after merging (`merged_positions` at the prefill, `decode_positions` at each step).

The merging and KV-selection maths stays in `ttm.py` and `kv_pruning.py`; adapters only move tensors.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class VideoTokens:
    """The video tokens of one batch (one video per sample), as the family's vision side produced them.

    Attributes:
        frames: per sample `[F, N, D]`: the frame tokens TTM sees, frame after frame, each in raster order.
        trailing: video tokens after the frames in every sample's video run (kept, never candidates).
        output: the encoder output the model consumes (`mm_encoder_outputs["video"]`).
    """

    frames: list[torch.Tensor]
    trailing: int
    output: Any

    @property
    def num_frames(self) -> int:
        return self.frames[0].shape[0]

    @property
    def tokens_per_frame(self) -> int:
        return self.frames[0].shape[1]

    @property
    def length(self) -> int:
        """Video tokens per sample: `F * N + trailing`."""
        return self.num_frames * self.tokens_per_frame + self.trailing


class FamilyAdapter:
    """One family's answers; subclasses set the class attributes and override what differs.

    Class attributes:
        name: registry name (`llava_onevision`, ...).
        model_types: the `config.model_type` values of the family's checkpoints.
        base_class / generation_class: `module:Class` paths of the transformers model whose forward the hooks
            wrap (it owns `get_video_features` and the text model) and of the class `from_pretrained` loads.
        frames_per_step: input frames that make one TTM "frame" (Qwen's temporal patch: 2).
        encoder_key / pixel_key: where the video's encoder output (`mm_encoder_outputs[encoder_key]`) and pixels
            (`pixel_key`) come in (InternVL encodes video frames as images: `image` / `pixel_values`).
        published_conversation: the conversation template the published DyCoke evaluation used for this family
            (`qwen_1_5` for LLaVA-OneVision), or None where no published DyCoke code exists: those families use
            their own chat template.
    """

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    base_class: ClassVar[str]
    generation_class: ClassVar[str]
    frames_per_step: ClassVar[int] = 1
    encoder_key: ClassVar[str] = "video"
    pixel_key: ClassVar[str] = "pixel_values_videos"
    published_conversation: ClassVar[str | None] = None

    @classmethod
    def load_class(cls, path: str) -> type:
        module, _, name = path.partition(":")
        return getattr(importlib.import_module(module), name)

    def find_base(self, model: nn.Module) -> nn.Module | None:
        """The family's base model inside `model` (itself or a submodule), or None."""
        base_class = self.load_class(self.base_class)
        return next((m for m in model.modules() if isinstance(m, base_class)), None)

    def attach(self, base: nn.Module) -> list:
        """Hooks the adapter itself needs while DyCoke is installed (their handles; `remove()` drops them)."""
        return []

    def video_token_id(self, base: nn.Module) -> int:
        return base.config.video_token_id

    def encode_video(self, base: nn.Module, kwargs: dict) -> VideoTokens | None:
        """The batch's video tokens (computed here when the forward got pixels), or None without a video."""
        raise NotImplementedError

    def select(self, video: VideoTokens, kept: list[torch.Tensor]) -> Any:
        """The encoder output holding only the kept video tokens (per sample `[M]` indices into its video run)."""
        raise NotImplementedError

    def patch_groups(self, base: nn.Module, values: torch.Tensor) -> torch.Tensor:
        """Per-patch values of the vision tower `[frames, patches, C]` (raster order, no CLS) grouped as the LLM's
        frame tokens take them: `[frames, N, G, C]`, the G patches that make each of the N tokens (the tower's
        downsampling). Families whose tokens are not fixed groups of patches do not offer it."""
        raise NotImplementedError(f"{self.name} does not group vision patches into its frame tokens.")

    def published_prompt(self, text: str, video_token: str) -> str:
        """The prompt of the published DyCoke evaluation for one video and `text` (the question as the harness gives
        it), with `video_token` where the published wrapper puts its image token."""
        raise ValueError(published_prompt_refusal(self.name))

    def check_frames(self, num_frames: int) -> None:
        """Raise before any compute when a video of `num_frames` frames cannot be split into TTM frames."""
        if num_frames % self.frames_per_step:
            raise ValueError(
                f"`num_frames` must be a multiple of {self.name}'s temporal patch ({self.frames_per_step} input frames "
                f"make one frame of tokens), got {num_frames}."
            )

    def processor_kwargs(self, videos: list) -> dict[str, Any]:
        """Extra keyword arguments of the processor call for these videos (`[F, H, W, 3]` arrays)."""
        return {}

    # Positions. Default (1-D RoPE, LLaVA families): the merged prompt is numbered 0, 1, ... as if the dropped tokens
    # had never been there, which is what the published code does (it builds the shorter sequence).

    def merged_positions(
        self, base: nn.Module, kwargs: dict, original: dict, sources: torch.Tensor, removed: int,
        renumber: bool = True,
    ) -> None:
        """Set `kwargs["position_ids"]` for the shortened prompt (`kwargs` already shortened).

        Args:
            base: the base model.
            kwargs: the forward's keyword arguments, `input_ids` / `attention_mask` already shortened.
            original: the forward's keyword arguments as they came (the whole prompt).
            sources: `[B, S']` for each position of the shortened prompt, the column of the original prompt whose
                token now sits there (merged video tokens may come in another order than their columns).
            removed: S - S', the same for every sample.
            renumber: True (the published DyCoke code): number the shorter prompt 0, 1, ... as if the dropped tokens
                had never been there. False: every kept token keeps the position it had in the whole prompt.
        """
        if renumber:
            if kwargs.get("position_ids") is not None:
                kwargs["position_ids"] = contiguous_positions(kwargs.get("attention_mask"), sources)
            return
        given = original.get("position_ids")
        # Without position ids the model numbers the whole prompt 0..S-1 (padding included): a token's is its column.
        kwargs["position_ids"] = sources if given is None else given.gather(1, sources)

    def decode_positions(self, kwargs: dict, removed: int, past: int, renumber: bool = True) -> None:
        """Map `generate`'s decode-step `position_ids` (which still count the dropped tokens) onto the merged prompt
        (`renumber`), or keep them counting the whole prompt (`renumber=False`; `past` is the shortened cache's
        length, from which the model would count when no ids come)."""
        positions = kwargs.get("position_ids")
        if renumber:
            if positions is not None:
                kwargs["position_ids"] = positions - removed
            return
        if positions is None:
            tokens = kwargs["input_ids"] if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
            kwargs["position_ids"] = (torch.arange(tokens.shape[1], device=tokens.device) + past + removed)[None]

    def tiny_model(self, overrides: dict[str, Any], seed: int) -> tuple[nn.Module, Any]:
        """A small random model of the family and a matching processor, built offline (tests, quick examples)."""
        raise NotImplementedError


def published_prompt_families() -> list[str]:
    """Families whose adapter builds the published DyCoke prompt."""
    from lightning_prune.dycoke.families import FAMILY_NAMES, get_family

    return [name for name in FAMILY_NAMES if get_family(name).published_conversation is not None]


def published_prompt_refusal(family: str) -> str:
    """The message refusing `prompt: published` for a family without published DyCoke code."""
    return (f"`prompt` 'published' exists only for families with published DyCoke code "
            f"{published_prompt_families()}, got family {family!r}; use prompt 'chat_template'.")


# Position ids of a prompt shortened before the LLM: `published` renumbers it (the published DyCoke / VisionZip /
# PruneVid code: the LLM just gets a shorter prompt), `original` keeps each kept token's whole-prompt position.
POSITION_RULES = ("published", "original")


def positions_problems(value: object) -> list[str]:
    """`["`positions` must be one of [...], got <value>."]` unless `value` is a position rule, else `[]`."""
    if value in POSITION_RULES:
        return []
    return [f"`positions` must be one of {list(POSITION_RULES)}, got {value!r}."]


def contiguous_positions(mask: torch.Tensor | None, columns: torch.Tensor) -> torch.Tensor:
    """`[B, S']` positions 0, 1, ... over the non-padding tokens (0 on padding), as `generate` numbers a prompt."""
    if mask is not None:
        return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    return torch.arange(columns.shape[1], device=columns.device).expand(columns.shape[0], -1)


def encoder_output(kwargs: dict, compute, key: str = "video", pixel_key: str = "pixel_values_videos") -> Any | None:
    """`mm_encoder_outputs[key]` when `generate` precomputed it, else `compute()` when pixels came, else None."""
    encoded = (kwargs.get("mm_encoder_outputs") or {}).get(key)
    if encoded is None and kwargs.get(pixel_key) is not None:
        encoded = compute()
    return encoded
