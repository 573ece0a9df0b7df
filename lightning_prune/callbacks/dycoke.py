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

from collections import defaultdict
from typing import Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_prune.dycoke.hooks import DyCokeHooks, DyCokeSettings, GenerationStats
from lightning_prune.dycoke.probe import GenerationTimer, peak_memory_bytes, reset_peak_memory

_STAGES = ("predict", "test")


class DyCoke(Callback):
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
    """

    def __init__(
        self,
        merging_ratio: float = 0.7,
        prune_layer: int = 3,
        decode_prune_ratio: float = 0.8,
        window: int = 4,
        reuse_threshold: float | None = 0.9,
        log_prefix: str = "dycoke",
        variant: Literal["official", "refined"] = "official",
        score_dtype: Literal["model", "float32"] | None = None,
        carry_state_across_samples: bool = False,
    ) -> None:
        super().__init__()
        self.settings = DyCokeSettings(merging_ratio, prune_layer, decode_prune_ratio, window, reuse_threshold, variant,
                                       score_dtype, carry_state_across_samples)
        self.log_prefix = log_prefix
        self._hooks: DyCokeHooks | None = None
        self._timer: GenerationTimer | None = None
        self._device = torch.device("cpu")
        self._logged_batches = 0
        self._totals: dict[str, list[float]] = defaultdict(list)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage in _STAGES:
            if self.settings.carry_state_across_samples:
                _check_batch_of_one(trainer)
            # Checks the module (a supported family inside, L below its layer count, attention) before any batch runs.
            self._hooks = _carry_over(self._hooks, DyCokeHooks(pl_module, self.settings))

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
            self._hooks = DyCokeHooks(pl_module, self.settings)
        self._hooks.install()
        self._timer = GenerationTimer(self._hooks.base).attach()
        self._device = pl_module.device
        self._logged_batches = 0
        self._totals.clear()
        rank_zero_info(f"DyCoke installed: {self.settings}")

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
            logger.save()  # predict never finalizes loggers: without this, CSVLogger would not write its file
        if self._totals:
            means = ", ".join(f"{name}={sum(v) / len(v):.4g}" for name, v in self._totals.items())
            rank_zero_info(f"DyCoke over {self._logged_batches} batches (means): {means}")

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


def _carry_over(previous: DyCokeHooks | None, hooks: DyCokeHooks) -> DyCokeHooks:
    """With carried state, the new hooks start from the previous run's last attention vector."""
    if previous is not None and hooks.settings.carry_state_across_samples:
        hooks.pruning.carried_attention = previous.pruning.carried_attention
    return hooks


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
