"""Layout augmentation for training the tiny video LLMs: varied visual layouts, so a model does not learn that a
token's position *is* its place in the video, and partial visual context at the answer, so it does not read the
answer from the visual tokens alone in its last layers.

A 7B video LLM is trained on videos of many lengths and resolutions, and its deep layers attend little to visual
tokens (FastV's observation); a 4-layer model trained on one fixed layout learns neither, so any method that
shortens the prompt or prunes the cache at the answer breaks it far more than it breaks the models the methods were
written for. Two knobs, each drawn afresh per training batch from a seeded generator (`seed`, global step):

- `visual_keep_min`: with probability `probability` the batch keeps a uniformly random fraction in
  `[visual_keep_min, 1]` of its frame tokens, drawn at random per sample, before the LLM; the shorter prompt is
  renumbered (1-D RoPE families) as any method that drops tokens does (`random` of `lightning_prune.compression`
  does the dropping). 1.0 turns it off.
- `answer_visual_dropout`: with probability `probability` the answer tokens' queries (the target tokens after the
  prompt, the positions a decode step runs) cannot attend to a uniformly random fraction in `[0,
  answer_visual_dropout]` of the visual tokens, per sample, in the LLM layers `>= dropout_from_layer`. 0.0 turns it
  off.
- `position_shuffle`: with this probability the batch's frame tokens are given the RoPE positions of their frame in
  a random order (each run of `tokens_per_frame` visual tokens: a frame, when nothing was dropped), so a position
  still says which frame a token is in but no longer where in the frame. A 1-D RoPE model trained on one layout reads
  the square's place from the token's position, so a method that drops tokens and renumbers the rest (the published
  DyCoke code does) leaves it blind to motion; shuffled, it has to read the place from the token itself (see
  `VideoLLM`'s `patch_position_loss`, which keeps it there). 0.0 turns it off. Families whose frame size comes from
  the video (Qwen) do not offer it.

Validation and test never see any of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lightning_prune.compression.floors import RandomTokensMethod
from lightning_prune.compression.sequence import decoder_layers
from lightning_prune.dycoke.families import get_family


@dataclass(frozen=True)
class LayoutAugmentation:
    """Training-time augmentation of `VideoLLM` (see the module docstring).

    Args:
        visual_keep_min: lowest fraction of frame tokens a batch keeps before the LLM, in (0, 1]; 1.0: off.
        answer_visual_dropout: highest fraction of visual tokens hidden from the answer tokens, in [0, 1); 0.0: off.
        dropout_from_layer: first LLM layer where the answer tokens lose them (>= 0).
        probability: chance that a batch is augmented at all (each knob drawn independently), in [0, 1].
        seed: seed of the draws (the global step is added).
        start_epoch: first training epoch that is augmented (a model that has first learned the task on the fixed
            layout; from scratch, LLaVA-OneVision learned too slowly under augmentation).
        position_shuffle: chance that a batch's frame tokens get their frame's positions in a random order, in
            [0, 1]; 0.0: off.
    """

    visual_keep_min: float = 1.0
    answer_visual_dropout: float = 0.0
    dropout_from_layer: int = 2
    probability: float = 0.5
    seed: int = 0
    start_epoch: int = 0
    position_shuffle: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 < self.visual_keep_min <= 1.0:
            problems.append(f"`visual_keep_min` must be in (0, 1], got {self.visual_keep_min!r}.")
        if not 0.0 <= self.answer_visual_dropout < 1.0:
            problems.append(f"`answer_visual_dropout` must be in [0, 1), got {self.answer_visual_dropout!r}.")
        if isinstance(self.dropout_from_layer, bool) or not isinstance(self.dropout_from_layer, int) \
                or self.dropout_from_layer < 0:
            problems.append(f"`dropout_from_layer` must be an int >= 0, got {self.dropout_from_layer!r}.")
        if isinstance(self.start_epoch, bool) or not isinstance(self.start_epoch, int) or self.start_epoch < 0:
            problems.append(f"`start_epoch` must be an int >= 0, got {self.start_epoch!r}.")
        if not 0.0 <= self.probability <= 1.0:
            problems.append(f"`probability` must be in [0, 1], got {self.probability!r}.")
        if not 0.0 <= self.position_shuffle <= 1.0:
            problems.append(f"`position_shuffle` must be in [0, 1], got {self.position_shuffle!r}.")
        if problems:
            raise ValueError("LayoutAugmentation: " + " ".join(problems))

    def enabled(self, epoch: int = 0) -> bool:
        """Whether training `epoch` is augmented at all."""
        return epoch >= self.start_epoch and (
            (self.probability > 0 and (self.visual_keep_min < 1.0 or self.answer_visual_dropout > 0.0))
            or self.position_shuffle > 0)

    def step_seed(self, step: int) -> int:
        """The seed of training step `step`'s draws."""
        return self.seed * 1_000_003 + step

    def for_step(self, step: int) -> tuple[float, float, bool, torch.Generator]:
        """This step's `(keep_ratio, dropout_rate, shuffle, generator)`; 1.0 / 0.0 / False where the step is not
        augmented that way."""
        generator = torch.Generator().manual_seed(self.step_seed(step))
        draws = torch.rand(4, generator=generator).tolist()
        keep = 1.0
        if draws[0] < self.probability and self.visual_keep_min < 1.0:
            keep = self.visual_keep_min + (1.0 - self.visual_keep_min) * draws[1]
        dropout = 0.0
        if draws[2] < self.probability and self.answer_visual_dropout > 0.0:
            dropout = self.answer_visual_dropout * draws[3]
        # Drawn only when asked for: a setting without it draws exactly what it drew before the knob existed.
        shuffle = self.position_shuffle > 0 and float(torch.rand(1, generator=generator)) < self.position_shuffle
        return keep, dropout, shuffle, generator


class AugmentedForward:
    """Context manager around one training forward of `model` (a model of `family`) with this step's augmentation.

    `answer_length` is the number of target tokens at the end of every row. On exit the hooks are gone.
    """

    def __init__(self, model: nn.Module, family: str, augmentation: LayoutAugmentation, step: int,
                 answer_length: int) -> None:
        adapter = get_family(family)
        self.model, self.family, self.answer_length = model, family, answer_length
        self.base = adapter.find_base(model)
        self.video_token_id = adapter.video_token_id(self.base)
        self.keep, self.dropout, self.shuffle, self.generator = augmentation.for_step(step)
        self.frame_length = (frame_length(adapter, self.base, "position_shuffle")
                             if augmentation.position_shuffle > 0 else 0)
        self.from_layer, self.seed = augmentation.dropout_from_layer, augmentation.step_seed(step) % 2**31
        self._hooks = None
        self._handles: list = []
        self._hidden: torch.Tensor | None = None  # [B, S] True where an answer query may not look (visual keys)
        self._blocked: torch.Tensor | None = None  # [B, 1, S, S] the same, as (query, key) pairs
        self._input_ids: torch.Tensor | None = None  # the prompt the LLM gets (after any dropping)

    def __enter__(self) -> AugmentedForward:
        if self.keep < 1.0:
            method = RandomTokensMethod(keep_ratio=self.keep, seed=self.seed)
            self._hooks = method.make_hooks(self.model, family=self.family).install()
        if self.dropout > 0.0 or self.shuffle:
            # Registered after the compression hook: sees the prompt it shortened.
            self._handles.append(self.base.register_forward_pre_hook(self._capture, with_kwargs=True))
        if self.dropout > 0.0:
            for layer in list(decoder_layers(self.base))[self.from_layer:]:
                self._handles.append(layer.register_forward_pre_hook(self._mask_layer, with_kwargs=True))
        if self.shuffle:
            self._handles.append(self.base.language_model.register_forward_pre_hook(self._shuffle_positions,
                                                                                    with_kwargs=True))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._hooks is not None:
            self._hooks.remove()
            self._hooks = None

    def _capture(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids")
        if input_ids is None:
            raise ValueError("`answer_visual_dropout` and `position_shuffle` need `input_ids` (with the video "
                             "placeholder tokens).")
        self._input_ids = input_ids
        if self.dropout == 0.0:
            return
        visual = input_ids == self.video_token_id
        draws = torch.rand(visual.shape, generator=self.generator).to(visual.device)
        self._hidden = visual & (draws < self.dropout)
        rows = torch.zeros(input_ids.shape[1], dtype=torch.bool, device=input_ids.device)
        rows[-self.answer_length:] = True
        self._blocked = rows[None, None, :, None] & self._hidden[:, None, None, :]  # once, for every layer

    def _mask_layer(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if self._blocked is None:
            return None
        hidden_states = args[0] if args else kwargs["hidden_states"]
        batch, length = hidden_states.shape[:2]
        mask = kwargs.get("attention_mask")
        if mask is None:  # causal, no padding: make it explicit
            mask = torch.ones(length, length, dtype=torch.bool, device=hidden_states.device).tril()
            mask = mask.expand(batch, 1, length, length)
        if mask.dim() != 4 or mask.shape[-1] != length or self._blocked.shape[-1] != length:
            raise ValueError(f"`answer_visual_dropout` needs a [B, 1, S, S] attention mask in the decoder layers "
                             f"(S = {self._blocked.shape[-1]}), got shape {tuple(mask.shape)}.")
        blocked = self._blocked.to(mask.device)
        if mask.dtype == torch.bool:
            mask = mask & ~blocked
        else:
            mask = mask.masked_fill(blocked, torch.finfo(mask.dtype).min)
        return args, {**kwargs, "attention_mask": mask}

    def _shuffle_positions(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """The language model's `position_ids` with every run of `frame_length` visual tokens' positions permuted."""
        input_ids = self._input_ids
        batch, length = input_ids.shape
        positions = kwargs.get("position_ids")
        if positions is None:  # the text model would number the prompt 0..S-1 (padding included)
            positions = torch.arange(length, device=input_ids.device).expand(batch, length)
        positions = positions.clone()  # [B, S], or [..., B, S] for multimodal RoPE
        for row in range(batch):
            visual = (input_ids[row] == self.video_token_id).nonzero().squeeze(1)
            for start in range(0, len(visual), self.frame_length):
                run = visual[start:start + self.frame_length]
                order = run[torch.randperm(len(run), generator=self.generator).to(run.device)]
                positions[..., row, run] = positions[..., row, order]
        return args, {**kwargs, "position_ids": positions}


def frame_length(adapter, base: nn.Module, argument: str) -> int:
    """Visual tokens per frame of a family whose frame size its config fixes; `argument` is refused otherwise."""
    tokens_per_frame = getattr(adapter, "tokens_per_frame", None)
    if tokens_per_frame is None:
        raise ValueError(f"`{argument}` needs a fixed number of tokens per frame; {adapter.name}'s comes from each "
                         f"video's size. Leave it off for {adapter.name}.")
    return tokens_per_frame(base)
