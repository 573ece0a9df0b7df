"""DyCoke (Tao et al., CVPR 2025) for video LLMs: temporal token merging and dynamic KV-cache pruning.

The maths (`ttm`, `kv_pruning`) is pure PyTorch, in two variants (`official`: the published code exactly; `refined`:
ours); `hooks` installs it on a transformers video LLM through transformers' public extension points (`attention`
registers the attention functions), with one adapter per model family (`families`). No Lightning here.
"""

from lightning_prune.dycoke.kv_pruning import DecodePruning, last_query_attention, select_visual_tokens
from lightning_prune.dycoke.ttm import (
    VARIANTS,
    kept_count,
    merged_token_count,
    reference_frames,
    temporal_token_merging,
    ttm_keep_indices,
    ttm_keep_positions,
)

__all__ = [
    "VARIANTS",
    "DecodePruning",
    "kept_count",
    "last_query_attention",
    "merged_token_count",
    "reference_frames",
    "select_visual_tokens",
    "temporal_token_merging",
    "ttm_keep_indices",
    "ttm_keep_positions",
]
