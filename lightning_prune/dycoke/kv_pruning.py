"""Dynamic KV-cache pruning of visual tokens during decoding: the maths and the per-generation state.

At every decode step the newest token's attention to the visual tokens in layer `L - 1` (softmax over all keys, then
the mean over heads) picks the `int((1 - P) * n_visual)` visual tokens that layers `>= L` attend to, next to every
non-visual token (the prompt's text and all generated tokens). Layers `< L` attend to everything. Nothing is deleted
from the cache, so a later step can pick a token again.

A step whose attention vector is at least `reuse_threshold` cosine-similar to the previous step's (per sample) is a
*similar step*. What happens then depends on `variant`:

- `official` (the published code, `dycoke_pruning` / `update_cache`): the selection is rebuilt only on dissimilar
  steps; on a similar step layers `>= L` attend to the *full* cache (the published loop resets the selection before
  layer L at every step). The candidates the caller passes are, as published, the merged visual tokens except the
  last one and the newline (which stay attended like text).
- `refined` (ours): a similar step reuses the previous step's selection, so every step is pruned and the per-layer
  compact copies survive; the candidates are every video token.

The step's attention row, its head mean and the cosine are computed in float32 (`score_dtype="float32"`, the
`refined` default) or, as published, in the model's own dtype (`score_dtype="model"`, the `official` default): the
published `calculate_attention_weights` multiplies, soft-maxes and averages in float16, which moves the top-k boundary
and the similar-step decision. With `carry_state=True` the previous attention vector survives `start`: the first
decode step of a generation is compared with the last step of the previous one, as the published model (whose state
lives on the model) does across the samples of a run.

Shapes follow transformers' caches: keys and values are `[B, kv_heads, seq, head_dim]`, queries
`[B, heads, q, head_dim]`.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from lightning_prune.dycoke.ttm import kept_count
from lightning_prune.dycoke.variant import Variant

#: Where the decode step scores: in float32, or in the model's dtype (as the published code does).
SCORE_DTYPES = ("model", "float32")


def check_score_dtype(score_dtype: str) -> None:
    """Raise a `ValueError` naming the choices unless `score_dtype` is one of `SCORE_DTYPES`."""
    if score_dtype not in SCORE_DTYPES:
        raise ValueError(f"`score_dtype` must be one of {list(SCORE_DTYPES)}, got {score_dtype!r}.")


def last_query_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    score_dtype: str = "float32",
) -> torch.Tensor:
    """Head-mean attention probabilities of the newest query token over all keys.

    `float32`: grouped-query attention is handled without repeating the keys (query heads grouped per key head), the
    scores are scaled and soft-maxed in float32. `model`: the published computation in the inputs' dtype: keys
    repeated per query head, `(q @ k^T) * scaling`, softmax and the mean over heads all in that dtype.

    Args:
        query: `[B, H, q, d]`; only the last query token is used.
        key: `[B, H_kv, S, d]` with `H` a multiple of `H_kv`.
        attention_mask: `None`, a boolean mask (True = attend) or an additive float mask, broadcastable to
            `[B, 1, q, S]`.
        scaling: the softmax scale, usually `d ** -0.5`.
        score_dtype: `float32` or `model`.

    Returns:
        `[B, S]` probabilities (each row sums to 1), float32 or in the inputs' dtype.
    """
    check_score_dtype(score_dtype)
    if score_dtype == "model":
        return _model_dtype_attention(query, key, attention_mask, scaling)
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query[:, :, -1, :].reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(grouped, key.transpose(-1, -2)).float() * scaling  # [B, H_kv, H / H_kv, S]
    if attention_mask is not None:
        last_row = attention_mask[:, :, -1:, :]  # [B or 1, 1, 1, S]
        if last_row.dtype == torch.bool:
            scores = scores.masked_fill(~last_row, float("-inf"))
        else:
            scores = scores + last_row.float()
    return scores.softmax(dim=-1).mean(dim=(1, 2))


def _model_dtype_attention(
    query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    # As the published `calculate_attention_weights` + `dycoke_pruning`: every op in the model's dtype, the same shapes.
    keys = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)  # repeat_kv: [B, H, S, d]
    scores = query[:, :, -1:, :] @ keys.transpose(-2, -1) * scaling  # [B, H, 1, S]
    if attention_mask is not None:
        last_row = attention_mask[:, :, -1:, :]
        if last_row.dtype == torch.bool:
            scores = scores.masked_fill(~last_row, float("-inf"))
        else:
            scores = scores + last_row.to(scores.dtype)
    return torch.softmax(scores, dim=-1).mean(1)[:, -1]


def select_visual_tokens(visual_attention: torch.Tensor, keep: int) -> torch.Tensor:
    """The decode step's top-k: the `keep` visual tokens with the highest attention, in position order.

    Args:
        visual_attention: `[B, V]` attention of the newest token to each visual token.
        keep: how many to keep, `0 <= keep <= V`.

    Returns:
        LongTensor `[B, keep]` of sorted indices into the V visual tokens.
    """
    if not 0 <= keep <= visual_attention.shape[-1]:
        raise ValueError(f"`keep` must be in [0, {visual_attention.shape[-1]}], got {keep}.")
    return visual_attention.topk(keep, dim=-1, sorted=False).indices.sort(dim=-1).values


def gather_positions(states: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """Select per-sample positions along `dim` (a copy of the selected entries only).

    Args:
        states: `[B, ...]` tensor, e.g. keys `[B, H_kv, S, d]` (dim 2) or a mask `[B, 1, q, S]` (dim 3).
        index: `[B, n]` positions along `dim`.
        dim: the sequence dimension of `states`.

    Returns:
        `states` with `dim` of size n.
    """
    if states.shape[0] == 1:  # index_select is several times faster than gather on a CPU
        return states.index_select(dim, index[0])
    shape = [states.shape[0]] + [1] * (states.dim() - 1)
    shape[dim] = index.shape[1]
    expanded = index.view(shape).expand(*states.shape[:dim], index.shape[1], *states.shape[dim + 1 :])
    return states.gather(dim, expanded)


class _CompactLayer:
    """One pruned layer's attended keys and values, laid out [prompt text | selected visual | generated].

    Kept between decode steps so that a step only writes what changed: the newest token, and the visual block when
    the selection changed. Shapes `[B, H_kv, capacity, d]`; `length` entries are valid.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int, source_length: int, version: int):
        self.keys, self.values = keys, values
        self.length, self.source_length, self.version = length, source_length, version


class DecodePruning:
    """Per-generation state of dynamic KV pruning, shared by the attention calls of one model.

    Call `start` after the prefill with the visual token positions; then, at every decode step, layer
    `prune_layer - 1` calls `observe` and every layer `>= prune_layer` calls `prune`.

    `prune` does not gather the attended entries afresh at each step: each pruned layer keeps a compact copy of them
    (about the text plus `1 - P` of the visual tokens) and per step appends the newest token and, only when the
    selection changed, rewrites the visual block. A compact copy that no longer matches the cache (its length, or the
    last generated entry after a beam reorder) is rebuilt from the cache.

    Args:
        prune_layer: L, the first layer whose attention is pruned (`>= 1`).
        ratio: P in [0, 1), the fraction of visual tokens pruned.
        reuse_threshold: a step is similar when the attention vectors' cosine similarity is at least this; `None`:
            no step is similar (a fresh selection every step).
        profile: accumulate the wall time of this class's own work (scoring, top-k, cache selection) in
            `overhead_s` (synchronizes CUDA around it).
        variant: what a similar step does: `official` attends to the full cache, `refined` reuses the selection.
        score_dtype: `model` (the published computation in the model's dtype) or `float32`; None: the variant's
            default (`official`: `model`, `refined`: `float32`).
        carry_state: keep the last attention vector across generations (the published runs, batch 1): the first
            decode step of the next generation is compared with it. Needs batch size 1.

    Attributes:
        scored_steps: decode steps scored since `start`.
        reused_steps: of those, steps where every sample was similar (refined: reused; official: unpruned).
        attended_lengths: per scored step, the mean (over the batch) KV length layers `>= L` attend to.
        overhead_s: with `profile`, seconds spent in `observe` and `prune` since `start`.
        carried_attention: with `carry_state`, the last scored step's candidate attention `[1, V]` (survives `reset`).
    """

    def __init__(
        self,
        prune_layer: int,
        ratio: float,
        reuse_threshold: float | None = 0.9,
        profile: bool = False,
        variant: str = "official",
        score_dtype: str | None = None,
        carry_state: bool = False,
    ):
        variant = Variant.of(variant)
        score_dtype = variant.default_score_dtype if score_dtype is None else score_dtype
        check_score_dtype(score_dtype)
        self.score_dtype = score_dtype
        self.carry_state = carry_state
        self.carried_attention: torch.Tensor | None = None  # carry_state: the last step's attention vector [1, V]
        self.prune_layer = prune_layer
        self.ratio = ratio
        self.reuse_threshold = reuse_threshold
        self.profile = profile
        self.variant = variant
        self.keep = 0
        self.prompt_length = 0
        self.reset()

    @property
    def active(self) -> bool:
        """True between `start` and `reset` when there is something to prune."""
        return self.visual_positions is not None and self.keep < self.visual_positions.shape[1]

    def reset(self) -> None:
        """End the generation: nothing is pruned until the next `start`."""
        self.visual_positions: torch.Tensor | None = None
        self.text_positions: torch.Tensor | None = None
        self.scored_steps = self.reused_steps = 0
        self.attended_lengths: list[float] = []
        self.overhead_s = 0.0
        self._unpruned: torch.Tensor | None = None  # official: [B] samples on a similar (full-cache) step, or None
        self._previous_attention: torch.Tensor | None = None
        self._selected: torch.Tensor | None = None
        self._version = 0  # bumped whenever the selection changes
        self._kv_length = -1  # cache length of the step `observe` last scored
        self._compact: dict[int, _CompactLayer] = {}
        self._attended: torch.Tensor | None = None
        self._attended_key = (-1, -1)  # (cache length, selection version) `_attended` was built for

    def start(self, visual_positions: torch.Tensor, prompt_length: int) -> None:
        """Begin a generation.

        Args:
            visual_positions: `[B, V]` sorted positions of the candidate visual tokens in the prompt (the same count
                per sample); every other prompt position is always attended.
            prompt_length: S, the prompt's length as the cache holds it.
        """
        self.reset()
        batch = visual_positions.shape[0]
        if self.carry_state:
            if batch != 1:
                raise ValueError(
                    f"`carry_state_across_samples` needs batches of 1 sample (the published runs), got {batch}."
                )
            if self.carried_attention is not None and self.carried_attention.shape == visual_positions.shape:
                self._previous_attention = self.carried_attention  # a different candidate count starts afresh
        is_visual = torch.zeros(batch, prompt_length, dtype=torch.bool, device=visual_positions.device)
        is_visual.scatter_(1, visual_positions, True)
        self.visual_positions = visual_positions
        self.text_positions = (~is_visual).nonzero()[:, 1].view(batch, -1)
        self.prompt_length = prompt_length
        self.keep = kept_count(visual_positions.shape[1], self.ratio, self.variant)

    def observe(
        self, query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float
    ) -> None:
        """Choose this step's visual tokens from layer `L - 1`'s attention (called once per decode step).

        Args:
            query: `[B, H, 1, d]` the newest token's query in layer `L - 1`.
            key: `[B, H_kv, S, d]` that layer's whole cache.
            attention_mask: `None` or the layer's mask (see `last_query_attention`).
            scaling: the softmax scale.
        """
        began = self._tic(key)
        attention = last_query_attention(query, key, attention_mask, scaling, self.score_dtype)
        visual = attention.gather(1, self.visual_positions)
        reuse = torch.zeros(visual.shape[0], dtype=torch.bool, device=visual.device)
        if self.reuse_threshold is not None and self._previous_attention is not None:
            reuse = F.cosine_similarity(visual, self._previous_attention, dim=-1) >= self.reuse_threshold
        all_reused = bool(reuse.all())
        if not all_reused:
            fresh = self.visual_positions.gather(1, select_visual_tokens(visual, self.keep))
            self._selected = fresh if self._selected is None else torch.where(reuse[:, None], self._selected, fresh)
            self._version += 1
        pruned_length = key.shape[2] - self.visual_positions.shape[1] + self.keep
        if self.variant.published:
            # Similar samples attend to the full cache at this step; the others to their fresh selection.
            self._unpruned = reuse if bool(reuse.any()) else None
            share = float(reuse.float().mean())
            self.attended_lengths.append(share * key.shape[2] + (1.0 - share) * pruned_length)
        else:
            self.attended_lengths.append(float(pruned_length))
        self._previous_attention = visual
        if self.carry_state:
            self.carried_attention = visual
        self._kv_length = key.shape[2]
        self.scored_steps += 1
        self.reused_steps += all_reused
        self._toc(began, key)

    @property
    def unpruned_step(self) -> bool:
        """`official` only: True when every sample is on a similar step (layers `>= L` see the full cache)."""
        return self._unpruned is not None and bool(self._unpruned.all())

    def attended_positions(self, kv_length: int) -> torch.Tensor:
        """`[B, n]` cache positions the layers `>= L` attend to at this step: prompt text, the selected visual
        tokens, then every token after the prompt (the order of `prune`'s keys)."""
        if self._selected is None or self._kv_length != kv_length:
            raise RuntimeError(
                f"DyCoke's layer {self.prune_layer - 1} did not score this decode step (cache length {kv_length}); "
                "layers must run in order, one token per step."
            )
        if self._attended_key != (kv_length, self._version):
            batch = self._selected.shape[0]
            generated = torch.arange(self.prompt_length, kv_length, device=self._selected.device).expand(batch, -1)
            self._attended = torch.cat([self.text_positions, self._selected, generated], dim=1)
            self._attended_key = (kv_length, self._version)
        return self._attended

    def prune(
        self, layer: int, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Keys, values and mask of the attended positions only (layers `>= L`).

        Args:
            layer: the layer's index (each pruned layer keeps its own compact copy).
            key: `[B, H_kv, S, d]` the layer's whole cache, newest token last.
            value: `[B, H_kv, S, d]`.
            attention_mask: `None` or `[B or 1, 1, q, S]`.

        Returns:
            The same with S replaced by the attended count n, in `attended_positions` order; on an `official` step
            where some samples are similar, the full cache with the unselected candidates of the other samples
            masked out; on one where all are, the inputs unchanged.
        """
        began = self._tic(key)
        kv_length = key.shape[2]
        if self._kv_length != kv_length:
            self.attended_positions(kv_length)  # raises: this step was not scored
        if self._unpruned is not None:
            if not self.unpruned_step:
                attention_mask = self._mask_unselected(key, attention_mask)
            self._toc(began, key)
            return key, value, attention_mask
        length = self.text_positions.shape[1] + self.keep + kv_length - self.prompt_length
        compact = self._compact.get(layer)
        if compact is not None and layer == self.prune_layer and not self._in_step(compact, key):
            self._compact.clear()  # the cache changed under us (e.g. beam search reordered it): rebuild everything
            compact = None
        if compact is None or compact.source_length != kv_length - 1 or compact.keys.shape[2] < length:
            compact = self._rebuild(layer, key, value, length)
        else:
            if compact.version != self._version:
                start, stop = self.text_positions.shape[1], self.text_positions.shape[1] + self.keep
                compact.keys[:, :, start:stop] = gather_positions(key, self._selected, 2)
                compact.values[:, :, start:stop] = gather_positions(value, self._selected, 2)
            compact.keys[:, :, length - 1] = key[:, :, -1]
            compact.values[:, :, length - 1] = value[:, :, -1]
        compact.length, compact.source_length, compact.version = length, kv_length, self._version
        if attention_mask is not None:
            index = self.attended_positions(kv_length)
            mask = attention_mask.expand(index.shape[0], *attention_mask.shape[1:])
            attention_mask = gather_positions(mask, index, 3)
        self._toc(began, key)
        return compact.keys[:, :, :length], compact.values[:, :, :length], attention_mask

    def _mask_unselected(self, key: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """`[B, 1, q, S]` mask hiding, for the samples not on a similar step, the candidates they did not select."""
        batch, kv_length = key.shape[0], key.shape[2]
        hidden = torch.zeros(batch, kv_length, dtype=torch.bool, device=key.device)
        hidden.scatter_(1, self.visual_positions, True)
        hidden.scatter_(1, self._selected, False)
        hidden &= ~self._unpruned[:, None]
        hidden = hidden[:, None, None, :]
        if attention_mask is None:
            return torch.zeros(hidden.shape, dtype=key.dtype, device=key.device).masked_fill(
                hidden, torch.finfo(key.dtype).min
            )
        attention_mask = attention_mask.expand(batch, *attention_mask.shape[1:])
        if attention_mask.dtype == torch.bool:
            return attention_mask & ~hidden
        return attention_mask.masked_fill(hidden, torch.finfo(attention_mask.dtype).min)

    def _rebuild(self, layer: int, key: torch.Tensor, value: torch.Tensor, length: int) -> _CompactLayer:
        index = self.attended_positions(key.shape[2])
        capacity = length + max(64, length // 4)  # room to append without rebuilding every step
        keys = key.new_empty(key.shape[0], key.shape[1], capacity, key.shape[3])
        values = value.new_empty(value.shape[0], value.shape[1], capacity, value.shape[3])
        keys[:, :, :length] = gather_positions(key, index, 2)
        values[:, :, :length] = gather_positions(value, index, 2)
        self._compact[layer] = _CompactLayer(keys, values, length, key.shape[2], self._version)
        return self._compact[layer]

    def _in_step(self, compact: _CompactLayer, key: torch.Tensor) -> bool:
        # The previous step's newest key must still be where we copied it from.
        if compact.source_length != key.shape[2] - 1 or compact.source_length <= self.prompt_length:
            return True
        return torch.equal(compact.keys[:, :, compact.length - 1], key[:, :, compact.source_length - 1])

    def _tic(self, like: torch.Tensor) -> float:
        if not self.profile:
            return 0.0
        if like.is_cuda:
            torch.cuda.synchronize(like.device)
        return time.perf_counter()

    def _toc(self, began: float, like: torch.Tensor) -> None:
        if self.profile:
            if like.is_cuda:
                torch.cuda.synchronize(like.device)
            self.overhead_s += time.perf_counter() - began
