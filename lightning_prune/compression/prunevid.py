"""PruneVid (Huang et al., 2024; Visual-AI/PruneVid `models/pllava/modeling_pllava.py`, `elastic_cache.py`, `llama.py`).

Stage 1, before the LLM, on one video's projected frame tokens `[T, L, C]` (`merge_frames_dynamic`):

1. **Temporal segments**: DPC-KNN (`dpc_knn`, k = 7) clusters the frame means into `int(T * temporal_segment_ratio)`
   clusters; `refine_clusters` keeps each cluster's longest run of frames and gives the other runs to the longer
   neighbouring run (left on ties); the runs are the segments.
2. **Static / dynamic tokens**: in a segment of W frames, a spatial position is static when the mean pairwise cosine
   of its W tokens is `> tau` (`(sum over pairs incl. self - W) / (W (W - 1))`, NaN for W = 1: dynamic). Static
   positions are averaged over the segment, dynamic ones stay per frame.
3. **Spatial clustering**: the static tokens, and each frame's dynamic tokens, are clustered by DPC-KNN (k = 7,
   fixed) into `int(n * cluster_ratio)` cluster means when there are more than 14 of them.
The video becomes, segment after segment, its static tokens then each frame's dynamic tokens.

DPC-KNN adds uniform noise times 1e-6 to the densities to break ties; the published code draws it from the global
generator, here from a `torch.Generator` the caller seeds.

Stage 2, inside the LLM at layer `selected_layer` (`prunevid_keep_indices`): the layer's attention probabilities
computed without RoPE and without the causal mask, `softmax(q k^T / sqrt(d))`, for the queries after the video;
max over heads, then over those queries, scores each video token. Per segment the top `int(n * alpha)` static tokens
and, frame by frame, the top `int(n_f * alpha)` dynamic tokens stay. The layer's output and the cache of every layer
up to and including it keep only the prefix, the kept video tokens and the suffix (with their original positions).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune.compression.base import (
    CompressionMethod,
    LayerContext,
    LayerCut,
    VisualContext,
    VisualSelection,
    check_fraction,
    int_problems,
)
from lightning_prune.dycoke.families.base import VideoTokens, positions_problems

#: Segment sizes above which tokens are clustered, and the spatial clustering's neighbours (published constants).
CLUSTER_MIN_TOKENS = 14
SPATIAL_K = 7


def dpc_knn(
    x: torch.Tensor, cluster_num: int, k: int, generator: torch.Generator | None = None, return_centres: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Density-peaks clustering with k-nearest-neighbour densities (the published `cluster_dpc_knn`, no token mask).

    Args:
        x: `[B, N, C]` tokens.
        cluster_num: clusters, <= N.
        k: neighbours for the density (the token itself included), <= N.
        generator: source of the 1e-6 tie-breaking noise (None: the global generator, as published).

    Returns:
        `[B, N]` the cluster of each token; cluster `j` is the `j`-th centre by score (distance to a denser token
        times density), each centre in its own cluster, every other token in its nearest centre's. With
        `return_centres`, also `[B, cluster_num]` the centres' indices.
    """
    with torch.no_grad():
        channels = x.shape[-1]
        distance = torch.cdist(x.float(), x.float()) / channels**0.5
        nearest = distance.topk(k, dim=-1, largest=False).values
        density = (-(nearest**2).mean(dim=-1)).exp()
        density = density + torch.rand(density.shape, generator=generator, device=density.device,
                                       dtype=density.dtype) * 1e-6
        denser = (density[:, None, :] > density[:, :, None]).to(x.dtype)
        farthest = distance.flatten(1).max(dim=-1).values[:, None, None]
        to_denser = (distance * denser + farthest * (1 - denser)).min(dim=-1).values
        centres = (to_denser * density).topk(cluster_num, dim=-1).indices  # [B, cluster_num]
        rows = torch.arange(x.shape[0], device=x.device)[:, None]
        labels = distance[rows, centres].argmin(dim=1)
        labels[rows.expand_as(centres), centres] = torch.arange(cluster_num, device=x.device).expand_as(centres)
    return (labels, centres) if return_centres else labels


def _runs(labels: list[int]) -> list[tuple[int, int, int]]:
    """Maximal runs of equal labels as `(label, start, end)` (end inclusive)."""
    runs, start = [], 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            runs.append((labels[start], start, i - 1))
            start = i
    return runs


def refine_clusters(labels: torch.Tensor) -> torch.Tensor:
    """Make each cluster one contiguous run of frames (the published `refine_clusters`, one video).

    A cluster keeps its longest runs (all of them on a tie) unless its longest run is one frame long; the other runs
    are re-labelled, left to right, with the label of the longer neighbouring run (left on a tie; 0 without any).

    Args:
        labels: `[N]` cluster of each frame.
    """
    original = labels.tolist()
    refined = list(original)
    longest: dict[int, int] = {}
    for label, start, end in _runs(original):
        longest[label] = max(longest.get(label, 0), end - start + 1)
    for label, start, end in _runs(original):
        if longest[label] == 1 or end - start + 1 != longest[label]:
            refined[start : end + 1] = [-1] * (end - start + 1)
    n, i = len(refined), 0
    while i < n:
        if refined[i] != -1:
            i += 1
            continue
        start = i
        while i < n and refined[i] == -1:
            i += 1
        left = right = None
        left_length = right_length = 0
        if start > 0:
            left = refined[start - 1]
            j = start - 1
            while j >= 0 and refined[j] == left:
                j -= 1
            left_length = start - 1 - j
        if i < n:
            right = refined[i]
            j = i
            while j < n and refined[j] == right:
                j += 1
            right_length = j - i
        if right_length > left_length:
            label = right
        elif left_length > right_length or left is not None:
            label = left
        else:
            label = right
        refined[start:i] = [0 if label is None else label] * (i - start)
    return torch.tensor(refined, dtype=labels.dtype, device=labels.device)


def segment_sizes(labels: torch.Tensor) -> list[int]:
    """Lengths of the runs of equal labels, in order."""
    return [end - start + 1 for _, start, end in _runs(labels.tolist())]


def cluster_means(x: torch.Tensor, labels: torch.Tensor, cluster_num: int) -> torch.Tensor:
    """`[B, cluster_num, C]` the mean of each cluster's tokens (0 for an empty cluster).

    Args:
        x: `[B, N, C]` tokens.
        labels: `[B, N]` from `dpc_knn`.
    """
    one_hot = F.one_hot(labels, num_classes=cluster_num).to(x.dtype)  # [B, N, K]
    sums = torch.bmm(one_hot.transpose(1, 2), x)
    counts = one_hot.sum(dim=1)
    means = sums / counts.clamp(min=1).unsqueeze(-1)
    return means.masked_fill((counts == 0).unsqueeze(-1), 0)


def spatial_merge(
    tokens: torch.Tensor, cluster_ratio: float, generator: torch.Generator | None, k: int = SPATIAL_K
) -> tuple[torch.Tensor, torch.Tensor]:
    """`[1, n, C]` -> `[1, int(n * cluster_ratio), C]` cluster means when n > 14, else the tokens unchanged.

    Returns:
        The tokens and `[n']` the index (into the n) of each one's representative: its cluster's centre.
    """
    if tokens.shape[1] <= CLUSTER_MIN_TOKENS:
        return tokens, torch.arange(tokens.shape[1], device=tokens.device)
    clusters = int(tokens.shape[1] * cluster_ratio)
    labels, centres = dpc_knn(tokens, clusters, k, generator, return_centres=True)
    return cluster_means(tokens, labels, clusters), centres[0]


@dataclass
class MergedVideo:
    """One video after stage 1.

    Attributes:
        tokens: `[M, C]` the merged tokens, segment after segment: static tokens, then each frame's dynamic tokens.
        static_sizes / dynamic_sizes / window_sizes: per segment, its static tokens, its dynamic tokens (all its
            frames), its frames.
        sources: `[M]` for each merged token the index `frame * L + position` of a frame token it stands for (our
            choice, for positions: a cluster's centre; a static token in its segment's first frame).
    """

    tokens: torch.Tensor
    static_sizes: list[int]
    dynamic_sizes: list[int]
    window_sizes: list[int]
    sources: torch.Tensor


def temporal_segments(frames: torch.Tensor, temporal_segment_ratio: float, k: int,
                      generator: torch.Generator | None = None) -> list[int]:
    """Frames per segment: DPC-KNN over the frame means `[T, C]`, refined into contiguous runs.

    Args:
        frames: `[T, L, C]` one video's frame tokens.
    """
    clusters = int(frames.shape[0] * temporal_segment_ratio)
    labels = dpc_knn(frames.mean(dim=1)[None], clusters, k, generator)[0]
    return segment_sizes(refine_clusters(labels))


def merge_frames_dynamic(
    frames: torch.Tensor,
    tau: float = 0.8,
    temporal_segment_ratio: float = 0.25,
    cluster_ratio: float = 0.5,
    k: int = 7,
    generator: torch.Generator | None = None,
) -> MergedVideo:
    """PruneVid's stage 1 on one video (the published `merge_frames_dynamic`, batch 1).

    Args:
        frames: `[T, L, C]` the projected frame tokens, each frame in raster order; T >= k.
        tau, temporal_segment_ratio, cluster_ratio: see `PruneVidMethod`.
        k: the temporal DPC-KNN's neighbours (the spatial clustering's stay 7, as published).
        generator: source of DPC-KNN's noise, drawn in the published order (segments, then per segment its static
            clustering and its frames' dynamic clusterings).
    """
    windows = temporal_segments(frames, temporal_segment_ratio, k, generator)
    video = frames[None]  # the published code keeps a batch dimension of 1
    per_frame = frames.shape[1]
    pieces, sources, static_sizes, dynamic_sizes = [], [], [], []
    start = 0
    for size in windows:
        window = video[:, start : start + size]  # [1, W, L, C]
        normed = F.normalize(window, p=2, dim=-1)
        similarity = torch.einsum("bwlc,btlc->bwtl", normed, normed)
        similarity = (similarity.sum(dim=-2) - 1).sum(dim=-2) / (size * (size - 1))  # [1, L]
        static = similarity[0] > tau
        places = static.nonzero()[:, 0], (~static).nonzero()[:, 0]
        tokens, centres = spatial_merge(window[:, :, static].mean(dim=1), cluster_ratio, generator)
        pieces.append(tokens)
        sources.append(start * per_frame + places[0][centres])
        static_sizes.append(tokens.shape[1])
        dynamic = 0
        for i in range(size):
            tokens, centres = spatial_merge(window[:, i, ~static], cluster_ratio, generator)
            pieces.append(tokens)
            sources.append((start + i) * per_frame + places[1][centres])
            dynamic += tokens.shape[1]
        dynamic_sizes.append(dynamic)
        start += size
    return MergedVideo(torch.cat(pieces, dim=1)[0], static_sizes, dynamic_sizes, windows, torch.cat(sources))


def unrotated_attention(query: torch.Tensor, key: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
    """Attention probabilities without RoPE and without a mask, `softmax(q k^T / sqrt(d))` in float32, cast back.

    Args:
        query: `[B, H, S, d]` the layer's queries before RoPE.
        key: `[B, KV, S, d]` its keys before RoPE; KV heads are repeated to H (the published code's LLaMA-7B has
            KV = H, where this is the identity).
        rows: the query rows wanted (None: all); each row is normalised over all S keys.

    Returns:
        `[B, H, rows, S]`.
    """
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    if rows is not None:
        query = query[:, :, rows]
    scores = torch.matmul(query, key.transpose(2, 3)) / query.shape[-1] ** 0.5
    return F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)


def prunevid_keep_indices(
    attention: torch.Tensor, video: MergedVideo | tuple[list[int], list[int], list[int]], alpha: float
) -> torch.Tensor:
    """Sorted positions, within the video span, that stage 2 keeps.

    Args:
        attention: `[H, Q, V]` attention probabilities of the queries after the video (rows) to the V video tokens.
        video: the segment sizes (`MergedVideo`, or `(static_sizes, dynamic_sizes, window_sizes)`).
        alpha: kept share of each segment's static tokens and of each frame's dynamic tokens.
    """
    if isinstance(video, MergedVideo):
        video = (video.static_sizes, video.dynamic_sizes, video.window_sizes)
    scores = attention.max(dim=0).values.max(dim=0).values  # [V]
    kept, start = [], 0
    for static, dynamic, frames in zip(*video, strict=True):
        top = scores[start : start + static].topk(int(static * alpha)).indices
        kept.append(top + start)
        per_frame = scores[start + static : start + static + dynamic].view(frames, -1)
        top = per_frame.topk(int(per_frame.shape[-1] * alpha), dim=-1).indices
        offsets = start + static + per_frame.shape[-1] * torch.arange(frames, device=scores.device)
        kept.append((top + offsets[:, None]).flatten())
        start += static + dynamic
    return torch.cat(kept).sort().values


@dataclass(frozen=True)
class PruneVidMethod(CompressionMethod):
    """PruneVid's knobs, named as the published code's options, defaulted to its evaluation (`scripts/eval.sh`).

    Attributes:
        tau: static threshold on the mean pairwise cosine of a position's tokens in a segment, in [-1, 1].
        temporal_segment_ratio: DPC-KNN clusters per frame for the temporal segments, in (0, 1].
        cluster_ratio: share of cluster means kept by the spatial clustering, in (0, 1].
        alpha: share of the video tokens kept at `selected_layer`, in (0, 1]; 1 keeps every token.
        selected_layer: the LLM layer whose attention selects the tokens; its output and later layers see only the
            kept ones, and the cache of it and the earlier layers is cut to them. None (default): the published
            layer's relative depth on this LLM, `round(10 / 32 * layers)`: the published 10 on PLLaVA-7B's 32
            layers, 1 on the tiny 4-layer models (what `at_budget` uses). An integer is taken as is and must leave
            a layer after it (0 to layers - 2).
        k: the temporal DPC-KNN's neighbours (the published call: 7; at most the frames per video; the spatial
            clustering keeps the published fixed 7).
        seed: seed of the generator DPC-KNN's tie-breaking noise comes from (the published code: the global one).
        temporal_merging: False skips stage 1 and scores every frame as a segment of dynamic tokens (a refinement:
            the published code always merges); with `alpha = 1` the model is then unchanged.
        positions: `published` (the merged prompt is renumbered, as the published code's LLM sees it) or
            `original` (a kept or merged token keeps its representative's whole-prompt position).

    Wiring (`CompressionHooks`): stage 1 in `select_visual` (the frames as the family adapter gives them: Qwen's
    temporal patches count as frames; LLaVA-OneVision's newline stays, after the video); a merged token takes the
    position of its representative (`MergedVideo.sources`) and, on Qwen3-VL, its DeepStack features. Stage 2 reads
    the input of `selected_layer` (a cut that keeps everything) and cuts before the next layer. Batch 1, as published.
    """

    name = "prunevid"
    needs_attention = False
    one_sample = True
    tau: float = 0.8
    temporal_segment_ratio: float = 0.25
    cluster_ratio: float = 0.5
    alpha: float = 0.4
    selected_layer: int | None = None  # the published 10 of 32 layers, as a relative depth
    k: int = 7
    seed: int = 0
    temporal_merging: bool = True
    positions: str = "published"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "_run", {})

    def problems(self) -> list[str]:
        problems = []
        if isinstance(self.tau, bool) or not isinstance(self.tau, (int, float)) or not -1.0 <= self.tau <= 1.0:
            problems.append(f"`tau` must be in [-1, 1], got {self.tau!r}.")
        for name in ("temporal_segment_ratio", "cluster_ratio", "alpha"):
            problems += check_fraction(name, getattr(self, name))
        if self.selected_layer is not None:
            problems += int_problems("selected_layer", self.selected_layer, 0)
        problems += int_problems("k", self.k, 1)
        problems += int_problems("seed", self.seed, 0)
        if not isinstance(self.temporal_merging, bool):
            problems.append(f"`temporal_merging` must be True or False, got {self.temporal_merging!r}.")
        return problems + positions_problems(self.positions)

    @classmethod
    def at_budget(cls, keep: float) -> PruneVidMethod:
        """`alpha = keep` at the published layer's relative depth: stage 2 keeps the share `keep` of what stage 1
        leaves (which merges further, by the video's content, so PruneVid retains at most `keep`)."""
        return cls(alpha=keep, selected_layer=None)

    def check_model(self, base, family, num_layers: int) -> None:
        layer = round(10 / 32 * num_layers) if self.selected_layer is None else self.selected_layer
        if not 0 <= layer <= num_layers - 2:
            raise ValueError(f"`selected_layer` must leave a layer after it in the LLM's {num_layers} layers "
                             f"(0 to {num_layers - 2}), got {layer}; None (the default) takes the published layer's "
                             "relative depth, 10 of 32 layers.")
        self._run["layer"] = layer

    def cut_layers(self, num_layers: int) -> tuple[int, ...]:
        return (self._run["layer"], self._run["layer"] + 1)

    def select_visual(self, video: VideoTokens, context: VisualContext) -> VisualSelection | None:
        self._run.pop("sizes", None)
        self._run.pop("attention", None)
        _check_batch(len(video.frames))
        frames = video.num_frames
        if not self.temporal_merging:
            return None
        if self.k > frames or int(frames * self.temporal_segment_ratio) < 1:
            raise ValueError(f"`k` must be at most the video's {frames} frames and `temporal_segment_ratio` times "
                             f"them at least 1, got k={self.k}, temporal_segment_ratio={self.temporal_segment_ratio}.")
        merged = merge_frames_dynamic(video.frames[0], self.tau, self.temporal_segment_ratio, self.cluster_ratio,
                                      self.k, context.generator)
        self._run["sizes"] = (merged.static_sizes, merged.dynamic_sizes, merged.window_sizes)
        total = frames * video.tokens_per_frame
        trailing = torch.arange(total, total + video.trailing, device=merged.sources.device)
        features = merged.tokens
        if video.trailing:
            features = torch.cat([features, video.output.pooler_output[0][total:].to(features)])
        return VisualSelection([torch.cat([merged.sources, trailing])], [features])

    def cut_layer(self, context: LayerContext) -> LayerCut | None:
        _check_batch(context.hidden_states.shape[0])
        if self.alpha >= 1.0:
            return None
        candidates = context.visual_mask[0] & (context.visual_index[0] < context.num_frames * context.tokens_per_frame)
        if context.layer == self._run["layer"]:
            self._run["attention"] = _video_attention(context.module, context.hidden_states, context.visual_mask[0],
                                                      candidates)
            return None
        if "attention" not in self._run:
            return None
        sizes = self._run.get("sizes")
        if sizes is None:  # stage 1 off: every frame is a segment of dynamic tokens
            sizes = ([0] * context.num_frames, [context.tokens_per_frame] * context.num_frames,
                     [1] * context.num_frames)
        columns = candidates.nonzero()[:, 0]
        kept = columns[prunevid_keep_indices(self._run.pop("attention"), sizes, self.alpha)]
        keep = torch.cat([(~candidates).nonzero()[:, 0], kept]).sort().values
        return LayerCut(keep[None], earlier_cache=True)


def _check_batch(batch: int) -> None:
    if batch != 1:
        raise ValueError(f"PruneVid runs one prompt at a time (the published code is batch 1; its merging gives each "
                         f"video its own token count; `VideoLLM` splits batches for it), got a batch of {batch}: "
                         "set the batch size to 1.")


def _video_attention(layer: nn.Module, hidden: torch.Tensor, visual_mask: torch.Tensor,
                     candidates: torch.Tensor) -> torch.Tensor:
    """`[H, Q, V]` PruneVid's attention in `layer` (before RoPE, no mask) of the queries after the video to the
    V candidate video tokens, from the layer's input `hidden` `[1, S, D]`."""
    attention = layer.self_attn
    normed = layer.input_layernorm(hidden)
    shape = (*hidden.shape[:2], -1, attention.head_dim)
    query = attention.q_proj(normed).view(shape)
    key = attention.k_proj(normed).view(shape)
    if getattr(attention, "q_norm", None) is not None:  # Qwen3: the norms come before RoPE
        query, key = attention.q_norm(query), attention.k_norm(key)
    last = int(visual_mask.nonzero()[-1, 0])
    rows = unrotated_attention(query.transpose(1, 2), key.transpose(1, 2), slice(last + 1, None))
    return rows[0][:, :, candidates]
