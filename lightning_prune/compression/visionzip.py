"""VisionZip (Yang et al., CVPR 2025), as dvlab-research/VisionZip does it (`visionzip/clip_encoder.py`, `utils.py`),
and the substitutes its public ports use on towers without a CLS token.

Per frame (or, in LightCompress's Qwen port, over the whole video), given each visual token's score and key:

- dominant tokens: the top `dominant` by score, kept as they are;
- contextual tokens: of the others (in order), every `step = max(1, rest // contextual)`-th is a target (the first
  `contextual` of them); each remaining token joins the target whose key is most cosine-similar (keys averaged over
  the heads, L2-normalised); a contextual token is its target plus the mean of the tokens that joined it.

The published order is kept: dominant tokens in position order, then the contextual tokens in target order (the
LightCompress port keeps every token in position order instead). Scores and keys, per `scoring`:

- `cls` (the published rule, CLIP towers with a CLS token: LLaVA-NeXT-Video): the CLS row of the feature layer's
  attention, summed over the heads; the keys of that layer. LLaVA-NeXT-Video drops the CLS and pools the patch grid
  (stride 2) before the projector, so scores and keys are pooled the same way (as HoliTom's port pools them).
  InternVL's InternViT has a CLS too; its pixel shuffle concatenates 2 x 2 patches into one LLM token, so scores
  and keys are averaged over each such group.
- `mean_query` (HoliTom's SigLIP port, cokeshao/HoliTom `visionzip/llava_arch.py`; LLaVA-OneVision): the feature
  layer's attention averaged over the heads and all queries, and its keys, pooled 2-D like the features (bilinear).
- `merge_group` (LightCompress's Qwen2.5-VL port, ModelTC/LightCompress
  `llmc/compression/token_reduction/visionzip.py`; the Qwen towers): the last vision block's attention averaged over
  the heads and summed over the queries, and its keys averaged over the heads, each averaged per 2 x 2 merge group,
  with the window order undone (Qwen3-VL has no windows); dominant and contextual counts over the whole video.

Budget: `keep_ratio` of each frame's N tokens are kept (`max(1, int(N * keep_ratio))`), `int(that * dominant_ratio)`
of them dominant (HoliTom's split; the published image setting is 54 dominant + 10 contextual = 64 of 576 tokens,
the defaults).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_prune.compression.base import CompressionMethod, VisualContext, VisualSelection, check_fraction
from lightning_prune.dycoke.families.base import VideoTokens, positions_problems

SCORINGS = ("auto", "cls", "mean_query", "merge_group")
# What each family's tower offers, and the substitute a tower without CLS takes (`scoring="auto"`).
FAMILY_SCORING = {"llava_next_video": "cls", "llava_onevision": "mean_query", "qwen2_5_vl": "merge_group",
                  "qwen3_vl": "merge_group", "internvl": "cls"}
_PORTS = {"mean_query": "HoliTom's SigLIP port", "merge_group": "LightCompress's Qwen2.5-VL port"}


def visionzip_merge(features: torch.Tensor, scores: torch.Tensor, keys: torch.Tensor, dominant: int,
                    contextual: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """VisionZip on one set of tokens.

    Args:
        features: `[N, D]` the tokens (what the LLM would receive).
        scores: `[N]` the dominance score of each token.
        keys: `[N, d]` each token's key (head mean), compared by cosine.
        dominant / contextual: how many of each (`dominant + contextual <= N`, `contextual >= 1` unless nothing
            remains).

    Returns:
        `(dominant_index [dominant] ascending, target_index [contextual] ascending, contextual [contextual, D])`.
    """
    count = features.shape[0]
    if not (0 <= dominant and 0 <= contextual and dominant + contextual <= count):
        raise ValueError(f"VisionZip keeps `dominant + contextual` <= {count} tokens, got {dominant} + {contextual}.")
    top = scores.topk(dominant).indices
    rest_mask = torch.ones(count, dtype=torch.bool, device=features.device)
    rest_mask[top] = False
    rest = rest_mask.nonzero()[:, 0]  # the others, in position order
    if contextual == 0:
        return rest_mask.logical_not().nonzero()[:, 0], rest[:0], features[:0]
    normalized = keys[rest] / keys[rest].norm(dim=-1, keepdim=True)
    step = max(1, len(rest) // contextual)
    targets = torch.arange(0, len(rest), step, device=features.device)[:contextual]
    is_target = torch.isin(torch.arange(len(rest), device=features.device), targets)
    similarity = normalized[~is_target] @ normalized[targets].T  # [others, contextual]
    assign = torch.zeros(len(similarity), len(targets), dtype=features.dtype, device=features.device)
    assign.scatter_(1, similarity.argmax(dim=1, keepdim=True), 1)
    counts = assign.sum(dim=0).clamp(min=1)[:, None]
    others = features[rest][~is_target]
    contextual_tokens = features[rest][targets] + assign.T @ others / counts
    return rest_mask.logical_not().nonzero()[:, 0], rest[targets], contextual_tokens


def split_budget(tokens: int, keep_ratio: float, dominant_ratio: float) -> tuple[int, int]:
    """`(dominant, contextual)` for `tokens` tokens: `max(1, int(tokens * keep_ratio))` kept, split by the ratio."""
    kept = max(1, int(tokens * keep_ratio))
    dominant = int(kept * dominant_ratio)
    return dominant, kept - dominant


@dataclass(frozen=True)
class VisionZipMethod(CompressionMethod):
    """VisionZip's settings.

    Attributes:
        keep_ratio: share of each frame's tokens kept, in (0, 1]; default 64 / 576 (the published 64-token setting).
        dominant_ratio: share of those that are dominant, in [0, 1); default 54 / 64 (published: 54 + 10).
        scoring: `cls` (published; needs a CLS token), `mean_query` (HoliTom's SigLIP port), `merge_group`
            (LightCompress's Qwen2.5-VL port), or `auto`: the one the family's tower takes.
        positions: `published` (the shorter prompt is renumbered, as the published code's LLM sees it) or
            `original` (kept tokens keep their whole-prompt positions).
    """

    name = "visionzip"
    needs_cls = True
    keep_ratio: float = 64 / 576
    dominant_ratio: float = 54 / 64
    scoring: str = "auto"
    positions: str = "published"

    def problems(self) -> list[str]:
        problems = check_fraction("keep_ratio", self.keep_ratio) + positions_problems(self.positions)
        if not (isinstance(self.dominant_ratio, (int, float)) and 0 <= self.dominant_ratio < 1):
            problems.append(f"`dominant_ratio` must be in [0, 1), got {self.dominant_ratio!r}.")
        if self.scoring not in SCORINGS:
            problems.append(f"`scoring` must be one of {list(SCORINGS)}, got {self.scoring!r}.")
        return problems

    @classmethod
    def at_budget(cls, keep: float) -> VisionZipMethod:
        return cls(keep_ratio=keep)

    def scoring_for(self, family_name: str) -> str:
        """The scoring on this family's tower; raises for `cls` on a tower without CLS, naming the substitute."""
        offered = FAMILY_SCORING.get(family_name)
        if offered is None:
            raise ValueError(f"VisionZip has no vision-tower probe for family {family_name!r}; supported: "
                             f"{list(FAMILY_SCORING)}.")
        if self.scoring == "auto":
            return offered
        if self.scoring != offered:
            hint = (f"use scoring={offered!r} ({_PORTS[offered]}) or 'auto'" if offered in _PORTS
                    else f"use scoring={offered!r} or 'auto'")
            reason = "has no CLS token" if self.scoring == "cls" else f"takes scoring={offered!r}"
            raise ValueError(f"VisionZip's `scoring` must match the vision tower: {family_name}'s tower {reason}; "
                             f"{hint}, got {self.scoring!r}.")
        return offered

    def check_model(self, base, family, num_layers: int) -> None:
        self.scoring_for(family.name)

    def vision_probe(self, base, family):
        from lightning_prune.compression.vision_probes import make_probe

        return make_probe(base, family, self.scoring_for(family.name))

    def select_visual(self, video: VideoTokens, context: VisualContext) -> VisualSelection | None:
        scores, keys = context.probe.take(video)  # per sample [F, N] and [F, N, d]
        dominant, contextual = split_budget(video.tokens_per_frame, self.keep_ratio, self.dominant_ratio)
        if dominant + contextual >= video.tokens_per_frame:
            return None  # every token kept, none merged: the model as it is (in its own order)
        per_video = self.scoring_for(context.family.name) == "merge_group"
        kept, features = [], []
        for frames, frame_scores, frame_keys in zip(video.frames, scores, keys, strict=True):
            count, per_frame, dim = frames.shape
            if per_video:  # LightCompress: one selection over the whole video, every token in position order
                top, targets, merged = visionzip_merge(frames.reshape(-1, dim), frame_scores.reshape(-1),
                                                       frame_keys.reshape(count * per_frame, -1),
                                                       dominant * count, contextual * count)
                index = torch.cat([top, targets])
                order = index.argsort()
                values = torch.cat([frames.reshape(-1, dim)[top], merged])[order]
                kept_index, kept_values = index[order], values
            else:  # per frame: dominant (position order), then contextual (target order)
                parts, values = [], []
                for frame in range(count):
                    top, targets, merged = visionzip_merge(frames[frame], frame_scores[frame], frame_keys[frame],
                                                           dominant, contextual)
                    parts.append(torch.cat([top, targets]) + frame * per_frame)
                    values.append(torch.cat([frames[frame][top], merged]))
                kept_index, kept_values = torch.cat(parts), torch.cat(values)
            trailing = torch.arange(count * per_frame, video.length, device=kept_index.device)
            kept.append(torch.cat([kept_index, trailing]))  # the trailing tokens keep their own features
            features.append(kept_values)
        return VisualSelection(kept, features)
