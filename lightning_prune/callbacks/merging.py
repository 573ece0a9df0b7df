"""Callbacks of the token-compression methods that merge tokens: FrameFusion and PruneVid.

Thin subclasses of `CompressionCallback` (`lightning_prune.callbacks.compression`): the constructor takes the
method's published parameters (checked there, before any batch) and the maths lives in `lightning_prune.compression`.
"""

from __future__ import annotations

from typing import Literal

from lightning.pytorch import LightningModule, Trainer
from typing_extensions import override

from lightning_prune.callbacks.compression import CompressionCallback
from lightning_prune.compression.framefusion import FrameFusionMethod
from lightning_prune.compression.prunevid import PruneVidMethod
from lightning_prune.dycoke.families.base import POSITION_RULES


class _OnePromptAtATime(CompressionCallback):
    """A method whose published code is batch 1 (`CompressionMethod.one_sample`): `VideoLLM` then generates each
    batch sample by sample, unpadded, exactly as batch-1 runs; a module that cannot split its batches (no
    `generation_batches`) is refused before any batch when its data module batches prompts."""

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        hparams = getattr(datamodule, "hparams", {})
        batch_size = hparams.get("batch_size") if hasattr(hparams, "get") else None
        splits = callable(getattr(pl_module, "generation_batches", None))
        if stage in ("predict", "test") and isinstance(batch_size, int) and batch_size > 1 and not splits:
            raise ValueError(f"{type(self).__name__} runs one prompt at a time (the published code is batch 1) and "
                             f"{type(pl_module).__name__} cannot split batches (a `VideoLLM` can), got `batch_size` "
                             f"{batch_size}: set --data.batch_size 1.")
        super().setup(trainer, pl_module, stage)


class FrameFusion(_OnePromptAtATime):
    """FrameFusion (Fu et al., ICCV 2025): merge same-position tokens of consecutive frames layer by layer, then prune
    by last-token attention to a compute `cost` (`lightning_prune.compression.framefusion`). One prompt at a
    time: `VideoLLM` generates a batch sample by sample.

    Args:
        cost: compute budget, a share of the LLM without FrameFusion, in (0, 1]. Published: 0.3.
        similarity_lower_bound: cosine at or above which a token merges into the previous frame's, in [-1, 1].
            Published: per model (the paper's S_th); 0.6 here.
        ratio_lower_bound: merging stops after a layer that merges less than this share, in [0, 1]. Published: 0.1.
        log_prefix: prefix of the logged metric names.
    """

    def __init__(self, cost: float = 0.3, similarity_lower_bound: float = 0.6, ratio_lower_bound: float = 0.1,
                 log_prefix: str = "framefusion") -> None:
        super().__init__(FrameFusionMethod(cost=cost, similarity_lower_bound=similarity_lower_bound,
                                           ratio_lower_bound=ratio_lower_bound), log_prefix)


class PruneVid(_OnePromptAtATime):
    """PruneVid (Huang et al., 2024): temporal segments and static/dynamic token merging before the LLM, then
    attention-based pruning at `selected_layer`, cache of the earlier layers included
    (`lightning_prune.compression.prunevid`). One prompt at a time: `VideoLLM` generates a batch sample by
    sample.

    Args:
        tau: static threshold on a position's mean pairwise cosine in a segment, in [-1, 1]. Published: 0.8.
        temporal_segment_ratio: temporal clusters per frame, in (0, 1]. Published: 0.25.
        cluster_ratio: kept share of the spatial clustering, in (0, 1]. Published: 0.5.
        alpha: kept share of the video tokens at `selected_layer`, in (0, 1]. Published: 0.4.
        selected_layer: the LLM layer whose attention selects (below the LLM's last layer). Default None: the
            published layer's relative depth, `round(10 / 32 * layers)` (the published 10 on PLLaVA-7B's 32 layers,
            1 on the tiny 4-layer models); an integer is taken as is.
        k: DPC-KNN neighbours. Published: 7.
        seed: seed of DPC-KNN's tie-breaking noise.
        temporal_merging: False skips stage 1 (refinement; the published code always merges).
        log_prefix: prefix of the logged metric names.
        positions: `published` (default: the merged prompt is renumbered, as the published code's LLM sees it) or
            `original` (each token keeps its representative's whole-prompt position).
    """

    def __init__(self, tau: float = 0.8, temporal_segment_ratio: float = 0.25, cluster_ratio: float = 0.5,
                 alpha: float = 0.4, selected_layer: int | None = None, k: int = 7, seed: int = 0,
                 temporal_merging: bool = True, log_prefix: str = "prunevid",
                 positions: Literal[POSITION_RULES] = "published") -> None:
        super().__init__(PruneVidMethod(
            tau=tau, temporal_segment_ratio=temporal_segment_ratio, cluster_ratio=cluster_ratio, alpha=alpha,
            selected_layer=selected_layer, k=k, seed=seed, temporal_merging=temporal_merging, positions=positions),
            log_prefix)
