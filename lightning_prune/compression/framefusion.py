"""FrameFusion (Fu et al., ICCV 2025; thu-nics/FrameFusion `framefusion/main.py`): merge, then prune, inside the LLM.

The published rule, per prompt (its code asserts batch 1; here one sample at a time):

1. **Merging**, before layer 0's attention and after every layer's attention (residual added, before the MLP): each
   video token is compared with the token at the same patch position of the previous frame still present (cosine of
   the hidden states, `dot / (|a| |b|)`). Tokens whose similarity is `>= similarity_lower_bound` are merged into the
   token before their run (a run of merged tokens and the token before it become their mean; the merged tokens
   leave the sequence, the kept one keeps its position). The share of merged tokens among the video tokens left is
   recorded as that step's sparsity. Merging stops after a step that merges less than `ratio_lower_bound`, or
   as soon as a step would exceed the sparsity the compute budget allows: that step merges only the most similar
   tokens up to the allowed share and also ends pruning.
2. **Pruning**, once, after the first attention that follows the end of merging: the video span is scored by the
   softmax attention row of the last prompt token (RoPE applied, no mask), averaged over heads; the top
   `round(n * (1 - r))` tokens stay, where `r` is the sparsity that brings the average compute to `cost`.

Compute model (`compute_pruning_ratio`): layer i costs the product of `1 - s_j` over the steps so far; the steps'
costs plus the remaining layers at the sparsity `r` must average `cost`. The published code fixes the number of
layers at 28 (Qwen2-7B's); here it is the model's own number of layers (`num_layers`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lightning_prune.compression.base import CompressionMethod, LayerContext, LayerCut, check_fraction

#: The patch type of a token that is not a video frame token (text, separators, LLaVA-OneVision's newline).
TEXT_TOKEN = -1
_GROUP_START = -2.0  # the similarity given to the first token of each patch position (never merged)


def compute_pruning_ratio(sparsity_list: list[float], cost: float, num_layers: int) -> float:
    """The sparsity the layers after the recorded steps need so that the average compute is `cost`.

    Args:
        sparsity_list: the merged share of each merging step so far, in order.
        cost: the compute budget, as a share of the model without FrameFusion.
        num_layers: the LLM's layers (the published code: 28).

    Returns:
        The sparsity in [0, 1) for the remaining layers (0 when the budget allows more than the tokens left).

    Raises:
        ValueError: when the recorded steps alone already exceed the budget (the published "cost is too small").
    """
    remaining = 1.0
    spent = 0.0
    for sparsity in sparsity_list:
        remaining *= 1 - sparsity
        spent += remaining
    left = num_layers * cost - spent
    if left < 0:
        raise ValueError(f"`cost` is too small for the merging already done: {cost} of {num_layers} layers.")
    share = left / ((num_layers - len(sparsity_list)) * remaining)
    return 0 if share > 1 else 1 - share


def frame_patch_types(
    length: int, video_start: int, num_frames: int, tokens_per_frame: int, device: torch.device | None = None
) -> torch.Tensor:
    """`[length]` patch type of each prompt token: its position within its frame, or `TEXT_TOKEN`.

    The frames are `num_frames` runs of `tokens_per_frame` tokens from `video_start`; every other token (text, and
    video tokens after the frames such as LLaVA-OneVision's newline) is `TEXT_TOKEN` and never merged.
    """
    types = torch.full((length,), TEXT_TOKEN, dtype=torch.long, device=device)
    end = video_start + num_frames * tokens_per_frame
    types[video_start:end] = torch.arange(tokens_per_frame, device=device).repeat(num_frames)
    return types


def consecutive_similarity(
    hidden: torch.Tensor, patch_type: torch.Tensor, patch_num: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarity of every video token to the previous one at the same patch position.

    Args:
        hidden: `[S, D]` one sample's hidden states.
        patch_type: `[S]` from `frame_patch_types` (after earlier merges: the types of the tokens left).
        patch_num: tokens per frame.

    Returns:
        `similarity [V]` and `order [V]` over the `V` video tokens grouped by patch position (positions 0, 1, ...,
        each in sequence order): `order` holds their sequence indices, `similarity[j]` the cosine of token `order[j]`
        with token `order[j - 1]`, and -2 where `j` starts a patch position's group.
    """
    groups = torch.arange(patch_num, device=hidden.device)
    group, order = torch.nonzero(patch_type[None, :] == groups[:, None], as_tuple=True)
    current, previous = hidden[order[1:]], hidden[order[:-1]]
    cosine = (current * previous).sum(-1) / (current.norm(dim=-1) * previous.norm(dim=-1))
    cosine = cosine.masked_fill(group[1:] != group[:-1], _GROUP_START)
    start = torch.full((1,), _GROUP_START, dtype=hidden.dtype, device=hidden.device)
    return torch.cat([start, cosine]), order


def merge_tokens(
    hidden: torch.Tensor, order: torch.Tensor, merged: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average each run of merged tokens into the token before it (in patch order); drop the merged ones.

    Args:
        hidden: `[S, D]` hidden states (updated in place, as the published code does).
        order: `[V]` from `consecutive_similarity`.
        merged: `[V]` bool, the tokens (in patch order) that merge into their predecessor.

    Returns:
        `hidden` (the kept tokens' rows updated, the merged rows left as they were) and `keep [S]` (bool).
    """
    keep = torch.ones(hidden.shape[0], dtype=torch.bool, device=hidden.device)
    if not bool(merged.any()):
        return hidden, keep
    steps = torch.arange(len(order), device=order.device)
    # The token each run merges into: the last unmerged token at or before it (a run at 0 wraps, as published).
    anchor = torch.where(merged, torch.full_like(steps, -1), steps).cummax(0).values
    members = steps[merged]
    targets = order[anchor[members]]
    hidden.index_add_(0, targets, hidden[order[members]])
    anchors, counts = torch.unique(anchor[members], return_counts=True)
    rows = order[anchors]
    hidden[rows] = hidden[rows] / (counts[:, None] + 1).to(hidden.dtype)
    keep[order[members]] = False
    return hidden, keep


def attention_keep_indices(
    last_row_attention: torch.Tensor, visual_mask: torch.Tensor, pruning_ratio: float
) -> torch.Tensor:
    """Sorted sequence positions that pruning keeps: every non-video token and the most attended video tokens.

    The published code scores the span `[start, start + n)` of the n video tokens left; the mask is the same span
    when the video is contiguous (every served family but Qwen3-VL, whose timestamps are text between frames).

    Args:
        last_row_attention: `[H, S]` the last prompt token's attention row per head (softmax, RoPE applied, no mask;
            `H = 1` for a row already averaged over heads).
        visual_mask: `[S]` True at the video tokens left.
        pruning_ratio: share of them dropped.
    """
    visual = visual_mask.nonzero()[:, 0]
    scores = last_row_attention.mean(0)[visual]
    top = visual[scores.topk(round(len(visual) * (1 - pruning_ratio))).indices]
    return torch.cat([(~visual_mask).nonzero()[:, 0], top]).sort().values


@dataclass
class FrameFusionState:
    """FrameFusion's progress through one prompt's prefill (one sample); `step` is called where the published is.

    Args:
        patch_type: `[S]` from `frame_patch_types`.
        patch_num: tokens per frame.
        visual_mask: `[S]` True at the video tokens (frames and any trailing video token such as a newline).
        num_layers: the LLM's layers (the compute model's; the published code: 28).
        cost, similarity_lower_bound, ratio_lower_bound: FrameFusion's settings (published defaults 0.3, 0.6, 0.1).
    """

    patch_type: torch.Tensor
    patch_num: int
    visual_mask: torch.Tensor
    num_layers: int
    cost: float = 0.3
    similarity_lower_bound: float = 0.6
    ratio_lower_bound: float = 0.1
    sparsity_list: list[float] = field(default_factory=list)
    finish_merging: bool = False
    finish_pruning: bool = False

    def __post_init__(self) -> None:
        self.merged_rows = torch.zeros(0, dtype=torch.long)

    @property
    def needs_attention(self) -> bool:
        """Whether the next layer's attention must report the last prompt token's row (pruning comes next)."""
        return self.finish_merging and not self.finish_pruning

    @property
    def done(self) -> bool:
        return self.finish_merging and self.finish_pruning

    def step(self, hidden: torch.Tensor, last_row_attention: torch.Tensor | None = None) -> torch.Tensor | None:
        """One published call: prune if due (needs the attention row), else merge if still merging.

        Args:
            hidden: `[S, D]` the sample's current hidden states (merging updates kept rows in place).
            last_row_attention: `[H, S]` the attention row of the last prompt token at this layer, when
                `needs_attention` was true before it.

        Returns:
            `[S']` the sorted positions of `hidden` that stay (None: all stay). The caller slices the hidden states,
            positions and masks with them; `hidden` already holds the merged values, and `merged_rows` lists the
            rows (positions of `hidden`) whose value merging replaced.
        """
        self.merged_rows = torch.zeros(0, dtype=torch.long, device=hidden.device)
        if self.needs_attention and last_row_attention is not None:
            ratio = compute_pruning_ratio(self.sparsity_list, self.cost, self.num_layers)
            keep = attention_keep_indices(last_row_attention, self.visual_mask, ratio)
            self.finish_pruning = True
            self._keep(keep)
            return keep
        if not self.finish_merging:
            return self._merge(hidden)
        return None

    def _keep(self, keep: torch.Tensor) -> None:
        self.patch_type, self.visual_mask = self.patch_type[keep], self.visual_mask[keep]

    def _merge(self, hidden: torch.Tensor) -> torch.Tensor | None:
        if len(self.sparsity_list) >= self.num_layers:
            # After the last layer's attention (the published code divides by zero here): nothing left to save, and
            # merging video rows there changes neither the cache nor the last token's logits.
            self.finish_merging = self.finish_pruning = True
            return None
        allowed = compute_pruning_ratio(self.sparsity_list, self.cost, self.num_layers)
        self.patch_type, self.visual_mask = self.patch_type.to(hidden.device), self.visual_mask.to(hidden.device)
        similarity, order = consecutive_similarity(hidden, self.patch_type, self.patch_num)
        frame_tokens = int((self.patch_type != TEXT_TOKEN).sum())
        merged = similarity >= self.similarity_lower_bound
        share = int(merged.sum()) / frame_tokens
        if share < allowed:
            self.sparsity_list.append(share)
            if share < self.ratio_lower_bound:
                self.finish_merging = True
        else:
            top = similarity.topk(int(allowed * frame_tokens)).indices
            merged = torch.zeros_like(merged)
            merged[top] = True
            self.finish_merging = self.finish_pruning = True
        _, keep = merge_tokens(hidden, order, merged)
        if bool(keep.all()):
            return None
        steps = torch.arange(len(order), device=order.device)
        anchor = torch.where(merged, torch.full_like(steps, -1), steps).cummax(0).values
        self.merged_rows = order[anchor[merged].unique()]
        keep = keep.nonzero()[:, 0]
        self._keep(keep)
        return keep


@dataclass(frozen=True)
class FrameFusionMethod(CompressionMethod):
    """FrameFusion's settings, named and defaulted as the published `apply_framefusion(model, cost,
    similarity_lower_bound, ratio_lower_bound)` with its README's evaluation values.

    Attributes:
        cost: the compute budget, a share of the LLM without FrameFusion, in (0, 1]; 1 keeps every token.
        similarity_lower_bound: a token at least this cosine-similar to the previous frame's token at its patch
            position merges into it, in [-1, 1] (the paper's S_th; the README leaves it per model, 0.6 here).
        ratio_lower_bound: merging stops after a step that merges less than this share, in [0, 1].

    Wiring (`CompressionHooks`): a cut before every layer. Before layer 0 the input embeddings are merged; before
    layer i >= 1 the step the published code takes after layer i - 1's attention (residual added, before the MLP)
    is taken on that state, captured at layer i - 1's `post_attention_layernorm`, and the MLP is re-applied to the
    merged rows only (the MLP acts token by token, so the kept rows' outputs are already those of the published
    order). Pruning reads layer i - 1's last-prompt-token attention row (head mean, RoPE applied). The published
    merge after the last layer's attention is skipped: it changes neither the cache nor the last token.
    On a DeepStack model (Qwen3-VL, not among the published models) merging starts before the first layer after
    the DeepStack additions, and the compute model counts the layers from there. Batch 1, as published
    (`one_sample`: `VideoLLM` generates a batch sample by sample).
    """

    name = "framefusion"
    needs_attention = True
    one_sample = True
    cost: float = 0.3
    similarity_lower_bound: float = 0.6
    ratio_lower_bound: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "_run", _Run())

    def problems(self) -> list[str]:
        problems = check_fraction("cost", self.cost)
        bound = self.similarity_lower_bound
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not -1.0 <= bound <= 1.0:
            problems.append(f"`similarity_lower_bound` must be in [-1, 1], got {bound!r}.")
        return problems + check_fraction("ratio_lower_bound", self.ratio_lower_bound, low_open=False)

    @classmethod
    def at_budget(cls, keep: float) -> FrameFusionMethod:
        """`cost = keep`: FrameFusion's budget is the average share of visual-token compute over the layers."""
        return cls(cost=keep)

    def check_model(self, base, family, num_layers: int) -> None:
        deepstack = len(getattr(base.config.vision_config, "deepstack_visual_indexes", None) or ())
        if deepstack >= num_layers:
            raise ValueError(f"FrameFusion needs an LLM layer after the {deepstack} DeepStack layers, "
                             f"got {num_layers} layers.")
        self._run.first = deepstack

    def attention_layers(self, num_layers: int) -> tuple[int, ...]:
        return tuple(range(self._run.first, num_layers - 1))

    def cut_layers(self, num_layers: int) -> tuple[int, ...]:
        self._run.num_layers = num_layers - self._run.first  # the compute model's layers (published: 28)
        return tuple(range(self._run.first, num_layers))

    def cut_layer(self, context: LayerContext) -> LayerCut | None:
        run = self._run
        if context.layer == run.first:
            run.reset()
            if context.hidden_states.shape[0] != 1:
                raise ValueError(f"FrameFusion runs one prompt at a time (the published code asserts batch size 1; "
                                 f"`VideoLLM` splits batches for it), got a batch of "
                                 f"{context.hidden_states.shape[0]}: set the batch size to 1.")
            run.state = FrameFusionState(
                _patch_types(context), context.tokens_per_frame, context.visual_mask[0].clone(), run.num_layers,
                self.cost, self.similarity_lower_bound, self.ratio_lower_bound)
            hidden = context.hidden_states[0].clone()
            keep = run.state.step(hidden)
            cut = None if keep is None else LayerCut(keep[None], hidden_states=hidden[None])
        elif run.state is None or run.state.done or run.captured is None:
            return None
        else:
            cut = self._after_attention(context)
        run.capture(None if run.state.done else context.module)
        return cut

    def _after_attention(self, context: LayerContext) -> LayerCut | None:
        run = self._run
        captured, run.captured = run.captured, None
        if captured.shape != context.hidden_states.shape:
            raise RuntimeError(f"FrameFusion captured {tuple(captured.shape)} before the MLP of layer "
                               f"{context.layer - 1}, its output is {tuple(context.hidden_states.shape)}.")
        hidden = captured[0].clone()
        keep = run.state.step(hidden, None if context.attention is None else context.attention.float())
        if keep is None:
            return None
        output = context.hidden_states
        rows = run.state.merged_rows
        if len(rows):
            layer = run.layer
            merged = hidden[rows].to(output.dtype)
            output = output.clone()
            output[0, rows] = merged + layer.mlp(layer.post_attention_layernorm(merged))
        return LayerCut(keep[None], hidden_states=output)


def _patch_types(context: LayerContext) -> torch.Tensor:
    """`[S]` patch type of each token of the (batch-1) prompt: its raster index in its frame, else `TEXT_TOKEN`."""
    index = context.visual_index[0]
    frames = context.num_frames * context.tokens_per_frame
    is_frame = (index >= 0) & (index < frames)
    return torch.where(is_frame, index % context.tokens_per_frame, torch.full_like(index, TEXT_TOKEN))


class _Run:
    """FrameFusion's state during one generation (the method's settings stay frozen)."""

    def __init__(self) -> None:
        self.first = 0  # the first layer FrameFusion acts before (after DeepStack's layers)
        self.num_layers = 0
        self.state: FrameFusionState | None = None
        self.captured: torch.Tensor | None = None
        self.layer: nn.Module | None = None
        self._handle = None

    def reset(self) -> None:
        self.state, self.captured, self.layer = None, None, None
        self._release()

    def capture(self, layer: nn.Module | None) -> None:
        """Keep the hidden states `layer` feeds its MLP's norm (residual added after attention), once."""
        self._release()
        self.layer = layer
        if layer is not None:
            self._handle = layer.post_attention_layernorm.register_forward_pre_hook(self._store)

    def _store(self, module: nn.Module, args: tuple) -> None:
        self.captured = args[0].detach()
        self._release()

    def _release(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
