"""The efficiency report of an lmms-eval run: per sample and in summary, with DyCoke on or off alike.

`EfficiencyProbe` is a Lightning callback around every predict batch: it counts the video tokens of the prompt the
model receives (before DyCoke's merging), and times the generation with `lightning_prune.dycoke.probe` (prefill, then
per-token decode) and its peak memory. DyCoke's own per-batch `dycoke/visual_tokens_after` (logged by the DyCoke
callback to the Trainer's loggers, here `MetricsCollector`) gives the count after merging; with DyCoke off nothing is
merged. Rows are plain dicts, written as JSON by `write_report`.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import fmean
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import Logger
from typing_extensions import override

from lightning_prune._files import write_atomic
from lightning_prune.dycoke.probe import GenerationTimer, peak_memory_bytes, reset_peak_memory

VISUAL_TOKENS_AFTER = "dycoke/visual_tokens_after"  # the DyCoke callback's metric name


class MetricsCollector(Logger):
    """A Lightning logger that keeps `log_metrics` calls in memory: `records[i]` holds the metrics of step i."""

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[int, dict[str, float]] = {}

    @property
    @override
    def name(self) -> str:
        return "lightning_prune_lmms"

    @property
    @override
    def version(self) -> int:
        return 0

    @override
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.records.setdefault(step if step is not None else len(self.records), {}).update(metrics)

    @override
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


def video_token_id(model: torch.nn.Module) -> int:
    """The id of the video placeholder token in a transformers VLM's config."""
    config = model.config
    for name in ("video_token_id", "video_token_index"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    raise ValueError(f"The model {type(model).__name__} has no `video_token_id` in its config: not a video model.")


class EfficiencyProbe(Callback):
    """Measures every predict batch of a `VideoLLM` (its transformers model at `pl_module.model`).

    After `trainer.predict`, `batches` holds one dict per batch: `visual_tokens_before` (per sample, a list),
    `prefill_s`, `decode_s_per_token`, `decode_steps`, `generate_s`, `peak_memory_mb`.
    """

    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []
        self._timer: GenerationTimer | None = None
        self._handle = None
        self._video_token = 0
        self._visual: list[int] | None = None
        self._device = torch.device("cpu")

    @override
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        model = pl_module.model
        family = getattr(pl_module, "family", None)  # the VideoLLM's adapter knows (InternVL: its image token)
        self._video_token = (family.video_token_id(family.find_base(model)) if family is not None
                             else video_token_id(model))
        self._timer = GenerationTimer(model).attach()
        self._handle = model.register_forward_pre_hook(self._count_visual_tokens, with_kwargs=True)
        self._device = pl_module.device
        self.batches = []

    @override
    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._visual = None
        reset_peak_memory(self._device)
        self._timer.start()

    @override
    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        timing = self._timer.stop()
        self.batches.append({
            "visual_tokens_before": self._visual or [],
            "prefill_s": timing.prefill_s,
            "decode_s_per_token": timing.decode_s_per_token,
            "decode_steps": timing.decode_steps,
            "generate_s": timing.total_s,
            "peak_memory_mb": peak_memory_bytes(self._device) / 2**20,
        })

    @override
    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._detach()

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._detach()

    def _detach(self) -> None:
        if self._timer is not None:
            self._timer.detach()
            self._timer = None
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _count_visual_tokens(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers names it `cache` now
        prefill = cache is None or cache.get_seq_length() == 0
        # Every prefill of the batch: one, or one per sample when a batch-1 method makes `VideoLLM` split the batch.
        if prefill and input_ids is not None:
            self._visual = (self._visual or []) + (input_ids == self._video_token).sum(dim=1).tolist()


def batch_rows(batch: dict[str, Any], after_mean: float | None, size: int) -> list[dict[str, Any]]:
    """One row per sample of a measured batch; `after_mean` is DyCoke's mean kept count (None: DyCoke off)."""
    before = batch["visual_tokens_before"] or [0] * size
    rows = []
    for tokens in before:
        row = {key: value for key, value in batch.items() if key != "visual_tokens_before"}
        after = tokens if after_mean is None else after_mean
        rows.append({"visual_tokens_before": tokens, "visual_tokens_after": after, "batch_size": size, **row})
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over samples (peak memory: the maximum), and the kept share of visual tokens."""
    if not rows:
        return {"samples": 0}
    before = fmean(row["visual_tokens_before"] for row in rows)
    after = fmean(row["visual_tokens_after"] for row in rows)
    return {
        "samples": len(rows),
        "visual_tokens_before": before,
        "visual_tokens_after": after,
        "visual_tokens_kept_fraction": after / before if before else 1.0,
        "prefill_s": fmean(row["prefill_s"] for row in rows),
        "decode_s_per_token": fmean(row["decode_s_per_token"] for row in rows),
        "generate_s_per_sample": fmean(row["generate_s"] / row["batch_size"] for row in rows),
        "peak_memory_mb": max(row["peak_memory_mb"] for row in rows),
    }


def write_report(path: Path, header: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
    """Write `{**header, "summary": ..., "samples": rows}` as JSON (atomically: a crash leaves no half file)."""
    write_atomic(path, json.dumps({**header, "summary": summarize(rows), "samples": rows}, indent=2) + "\n")
    return path
