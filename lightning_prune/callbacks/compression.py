"""Token-compression callbacks: one generic `CompressionCallback` and a thin subclass per method.

Drop one into any Lightning run whose module holds a transformers video LLM of a supported family and calls
`generate` (or `forward`) on it during `predict` / `test`: at the start it installs the method
(`lightning_prune.compression`), at the end it removes it, and the model behaves exactly as before. Per batch it logs
`<log_prefix>/*` (visual tokens before / after, KV lengths, prefill / per-token decode / end-to-end latency, peak
memory) to every logger. Two compression callbacks (DyCoke included) in one run are refused.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_prune.compression.base import CompressionMethod
from lightning_prune.compression.fastv import FastVMethod
from lightning_prune.compression.floors import RandomTokensMethod, UniformSpatialMethod, UniformTemporalMethod
from lightning_prune.compression.visionzip import VisionZipMethod
from lightning_prune.dycoke.families.base import POSITION_RULES
from lightning_prune.dycoke.hooks import GenerationStats
from lightning_prune.dycoke.probe import GenerationTimer, peak_memory_bytes, reset_peak_memory

_STAGES = ("predict", "test")


def check_single_compression(trainer: Trainer) -> None:
    """Raise when the trainer holds more than one token-compression callback."""
    callbacks = getattr(trainer, "callbacks", [])  # a bare stand-in trainer (tests, scripts) holds none
    found = [type(callback).__name__ for callback in callbacks if isinstance(callback, CompressionCallback)]
    if len(found) > 1:
        raise ValueError(f"One token-compression callback per run, got {len(found)}: {found}. Keep one of them.")


class CompressionCallback(Callback):
    """A token-compression method on a video LLM, for `predict` and `test`.

    Args:
        method: the method and its settings (`lightning_prune.compression.get_method`).
        log_prefix: prefix of the logged metric names (default: the method's name).
    """

    def __init__(self, method: CompressionMethod, log_prefix: str | None = None) -> None:
        super().__init__()
        self.method = method
        self.log_prefix = log_prefix or method.name
        self._hooks = None
        self._timer: GenerationTimer | None = None
        self._device = torch.device("cpu")
        self._logged_batches = 0
        self._totals: dict[str, list[float]] = defaultdict(list)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage in _STAGES:
            check_single_compression(trainer)
            carrying = getattr(self.method, "carry_state_across_samples", False)  # DyCoke's published-run option
            if carrying:
                _check_batch_of_one(trainer)
            # Checks the module (a supported family inside, layers in range, attention) before any batch runs.
            hooks = self.method.make_hooks(pl_module)
            if carrying and self._hooks is not None:  # as the DyCoke callback: the state survives between runs
                hooks.pruning.carried_attention = self._hooks.pruning.carried_attention
            self._hooks = hooks

    @override
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._install(pl_module)

    @override
    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._install(pl_module)

    @override
    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._start_batch()

    @override
    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._start_batch()

    @override
    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._end_batch(trainer)

    @override
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._end_batch(trainer)

    @override
    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._remove_and_summarize(trainer)

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._remove_and_summarize(trainer)

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._remove()

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove()

    @property
    def installed(self) -> bool:
        return self._hooks is not None and self._hooks.installed

    def _install(self, pl_module: LightningModule) -> None:
        if self._hooks is None:  # setup() was skipped, e.g. hooks called by hand
            self._hooks = self.method.make_hooks(pl_module)
        self._hooks.install()
        self._timer = GenerationTimer(self._hooks.base).attach()
        self._device = pl_module.device
        self._logged_batches = 0
        self._totals.clear()
        rank_zero_info(f"Token compression installed: {self.method.describe()}")

    def _start_batch(self) -> None:
        if self._timer is not None:
            reset_peak_memory(self._device)
            self._timer.start()

    def _end_batch(self, trainer: Trainer) -> None:
        if self._timer is None:
            return
        timing = self._timer.stop()
        metrics = _generation_metrics(self._hooks.pop_stats())
        metrics.update(
            prefill_latency_s=timing.prefill_s,
            decode_latency_per_token_s=timing.decode_s_per_token,
            e2e_latency_s=timing.total_s,
            peak_memory_mb=peak_memory_bytes(self._device) / 2**20,
        )
        named = {f"{self.log_prefix}/{name}": float(value) for name, value in metrics.items()}
        for logger in trainer.loggers:  # predict does not allow LightningModule.log
            logger.log_metrics(named, step=self._logged_batches)
        for name, value in named.items():
            self._totals[name].append(value)
        self._logged_batches += 1

    def _remove_and_summarize(self, trainer: Trainer) -> None:
        self._remove()
        for logger in trainer.loggers:
            logger.save()
        if self._totals:
            means = ", ".join(f"{name}={sum(v) / len(v):.4g}" for name, v in self._totals.items())
            rank_zero_info(f"{self.method.describe()} over {self._logged_batches} batches (means): {means}")

    def _remove(self) -> None:
        if self._timer is not None:
            self._timer.detach()
            self._timer = None
        if self._hooks is not None:
            self._hooks.remove()


def _check_batch_of_one(trainer: Trainer) -> None:
    datamodule = trainer.datamodule
    batch_size = getattr(datamodule, "batch_size", None)
    if batch_size is None and datamodule is not None:
        batch_size = dict(getattr(datamodule, "hparams", {})).get("batch_size")
    if isinstance(batch_size, int) and batch_size != 1:
        raise ValueError("`carry_state_across_samples` needs batches of 1 sample (the published runs, in dataset "
                         f"order), got data batch_size {batch_size}; set it to 1 or turn carrying off.")


def _generation_metrics(stats: list[GenerationStats]) -> dict[str, float]:
    """Per-sample token counts and per-step KV lengths averaged over the batch's generations."""
    if not stats:
        return {}
    steps_full = [length for item in stats for length in item.full_kv_lengths]
    steps_attended = [length for item in stats for length in item.attended_kv_lengths]
    before = sum(item.visual_tokens_before for item in stats) / len(stats)
    after = sum(item.visual_tokens_after for item in stats) / len(stats)
    metrics = {
        "visual_tokens_before": before,
        "visual_tokens_after": after,
        "visual_tokens_kept_fraction": after / before,
        "decode_steps": len(steps_full),
    }
    if steps_full:
        metrics["full_kv_length_mean"] = sum(steps_full) / len(steps_full)
        metrics["attended_kv_length_mean"] = sum(steps_attended) / len(steps_attended)
        metrics["reused_selection_fraction"] = sum(item.reused_steps for item in stats) / len(steps_full)
    return metrics


class FastV(CompressionCallback):
    """FastV (Chen et al., ECCV 2024), its KV-cache variant: layers >= K keep the top `ratio` of the visual tokens by
    layer K - 1's last-token attention (`lightning_prune.compression.fastv`).

    Args:
        K: first layer that sees only the kept visual tokens (>= 1, below the LLM's depth). Published: 3.
        ratio: kept share of the visual tokens, in (0, 1]. Published: 0.5.
        log_prefix: prefix of the logged metric names.
    """

    def __init__(self, K: int = 3, ratio: float = 0.5, log_prefix: str = "fastv") -> None:  # noqa: N803
        super().__init__(FastVMethod(K=K, ratio=ratio), log_prefix)


class RandomTokens(CompressionCallback):
    """Floor: `keep_ratio` of the frame tokens drawn at random (seeded) before the LLM. `positions`: `published`
    (the shorter prompt is renumbered) or `original` (kept tokens keep their whole-prompt positions)."""

    def __init__(self, keep_ratio: float = 0.25, seed: int = 0, log_prefix: str = "random",
                 positions: Literal[POSITION_RULES] = "published") -> None:
        super().__init__(RandomTokensMethod(keep_ratio=keep_ratio, seed=seed, positions=positions), log_prefix)


class UniformSpatial(CompressionCallback):
    """Floor: the same evenly spaced `keep_ratio` of every frame's tokens before the LLM (`positions`: as
    `RandomTokens`)."""

    def __init__(self, keep_ratio: float = 0.25, log_prefix: str = "uniform_spatial",
                 positions: Literal[POSITION_RULES] = "published") -> None:
        super().__init__(UniformSpatialMethod(keep_ratio=keep_ratio, positions=positions), log_prefix)


class UniformTemporal(CompressionCallback):
    """Floor: every token of `keep_ratio` of the frames, evenly spaced, before the LLM (`positions`: as
    `RandomTokens`)."""

    def __init__(self, keep_ratio: float = 0.25, log_prefix: str = "uniform_temporal",
                 positions: Literal[POSITION_RULES] = "published") -> None:
        super().__init__(UniformTemporalMethod(keep_ratio=keep_ratio, positions=positions), log_prefix)


class VisionZip(CompressionCallback):
    """VisionZip (Yang et al., CVPR 2025) per frame before the LLM: dominant tokens by attention, contextual tokens
    merged by key similarity (`lightning_prune.compression.visionzip`).

    Args:
        keep_ratio: share of each frame's tokens kept, in (0, 1]. Default: 64 / 576 (the published 64-token setting).
        dominant_ratio: share of those that are dominant, in [0, 1). Default: 54 / 64 (published 54 + 10).
        scoring: `cls` (the published rule; CLIP towers), `mean_query` (HoliTom's SigLIP port), `merge_group`
            (LightCompress's Qwen2.5-VL port), `auto` (default): the one the model's tower takes.
        log_prefix: prefix of the logged metric names.
        positions: `published` (default: the shorter prompt is renumbered, as the published code's LLM sees it) or
            `original` (kept tokens keep their whole-prompt positions).
    """

    def __init__(self, keep_ratio: float = 64 / 576, dominant_ratio: float = 54 / 64, scoring: str = "auto",
                 log_prefix: str = "visionzip", positions: Literal[POSITION_RULES] = "published") -> None:
        super().__init__(VisionZipMethod(keep_ratio=keep_ratio, dominant_ratio=dominant_ratio, scoring=scoring,
                                         positions=positions), log_prefix)
