"""`DyCoke`: training-free token compression for a video LLM during `predict` / `test`.

Drop it into any Lightning run whose module holds a transformers video LLM of a supported family (LLaVA-OneVision,
LLaVA-NeXT-Video, Qwen2.5-VL, Qwen3-VL, InternVL: `lightning_prune.dycoke.families`) and calls `generate` (or
`forward`) on it:
at predict/test start it installs temporal token merging and dynamic KV-cache pruning (`lightning_prune.dycoke.hooks`),
at the end it removes them, and the model behaves exactly as before. Per batch it logs `dycoke/*` to every logger:
visual tokens before and after merging, the KV length the pruned layers attend to at each decode step (mean), prefill /
per-token decode / end-to-end latency and peak memory; a summary goes to the console.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from lightning_prune.callbacks.compression import CompressionCallback
from lightning_prune.compression.dycoke import DyCokeMethod
from lightning_prune.dycoke.families.base import POSITION_RULES
from lightning_prune.dycoke.hooks import DyCokeSettings
from lightning_prune.dycoke.variant import VARIANTS


class DyCoke(CompressionCallback):
    """DyCoke (Tao et al., CVPR 2025) on a video LLM, for `predict` and `test`.

    Args:
        merging_ratio: K in [0, 1): share of each merged frame's visual tokens that temporal token merging drops.
        prune_layer: L >= 1: at each decode step, LLM layers >= L attend only to the selected visual tokens
            (chosen by layer L - 1's attention); layers < L attend to everything.
        decode_prune_ratio: P in [0, 1): share of the visual tokens the layers >= L skip.
        window: frames per merging window (the paper: 4).
        reuse_threshold: a decode step whose attention vector is at least this cosine-similar to the previous step's
            is *similar*; `None`: no step is.
        log_prefix: prefix of the logged metric names.
        variant: `official` (default) reproduces the published DyCoke code exactly: its merged token order, its
            windows, its decode candidates, and similar steps run unpruned. `refined` is ours: spatial order, every
            window merged, similar steps reuse the previous selection (see the README's DyCoke section).
        score_dtype: dtype of the decode step's attention row, head mean and cosine: `model` (as published, e.g.
            float16) or `float32`; None: `model` for `official`, `float32` for `refined`.
        carry_state_across_samples: carry the last decode step's attention vector over to the next generation, as
            the published runs do (batch size 1, in dataset order); it survives between predict/test runs of this
            callback. False (default): every generation starts afresh.
        positions: position ids of the merged prompt. `published` (default) as the published code: the shorter
            prompt is numbered as if the merged tokens had never been there (on the 1-D RoPE families, LLaVA-*, every
            token after the first merged one moves). `original`: each kept token keeps its position in the whole
            prompt and decoding continues from the whole prompt's length (see the README: on the trained tiny
            LLaVA-OneVision it is worth 26 points at the published K, L, P).
    """

    def __init__(
        self,
        merging_ratio: float = 0.7,
        prune_layer: int = 3,
        decode_prune_ratio: float = 0.8,
        window: int = 4,
        reuse_threshold: float | None = 0.9,
        log_prefix: str = "dycoke",
        variant: Literal[VARIANTS] = "official",  # the choices of `dycoke.variant.Variant`
        score_dtype: Literal["model", "float32"] | None = None,
        carry_state_across_samples: bool = False,
        positions: Literal[POSITION_RULES] = "published",
    ) -> None:
        settings = DyCokeSettings(merging_ratio, prune_layer, decode_prune_ratio, window, reuse_threshold, variant,
                                  score_dtype, carry_state_across_samples, positions)  # checks each, naming it
        super().__init__(DyCokeMethod(**dataclasses.asdict(settings)), log_prefix)
        self.settings = settings
