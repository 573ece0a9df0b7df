"""`LightningPruneVideoLLM`: lmms-eval's model `lightning_prune`, one of our `VideoLLM` configs with DyCoke on or off
(or another token-compression method: `method=fastv,K=2,ratio=0.5`).

    lmms-eval --model lightning_prune --model_args config=configs/dycoke/tiny.yaml,dycoke=true,num_frames=16 ...

Requests run through the same Lightning path as `lightning-prune predict`: a Trainer predicts with the config's
`VideoLLM` (the family's own processor and prompt format) and, with DyCoke on, the `DyCoke` callback, which installs
and removes itself around every run (the attention implementation comes back as it was). lmms-eval's context is the
whole prompt; decoding is greedy; `until` strings cut the answer; batches are left-padded by the model's processor.
An efficiency report (per sample and in summary) is written to `report=PATH` when lmms-eval calls `clean()` at the end
of the run, and its summary is added to lmms-eval's own `throughput` results. This is the only module of the project
that imports lmms-eval.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.evaluator import simple_evaluate
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from lmms_eval.tasks import TaskManager
from torch.utils.data import DataLoader

from lightning_prune.data.video_qa import collate_video_qa
from lightning_prune.evaluation.efficiency import (
    VISUAL_TOKENS_AFTER,
    EfficiencyProbe,
    MetricsCollector,
    batch_rows,
    summarize,
    write_report,
)
from lightning_prune.evaluation.model_args import parse_model_args
from lightning_prune.evaluation.tiny_task import TASKS_DIR
from lightning_prune.evaluation.video_requests import (
    VideoRequest,
    VideoRequestDataset,
    parse_request,
    truncate_at_stops,
)

MODEL_NAME = "lightning_prune"
_SERVED = "generate_until requests (one video, given as a file path or a list of PIL frames, and a prompt)"


class LightningPruneVideoLLM(lmms):
    """A project `VideoLLM` (any family its config builds) under lmms-eval, with or without DyCoke.

    Args:
        **model_args: lmms-eval's parsed `--model_args` plus its `batch_size`, `max_batch_size` (unused) and
            `device`; see `lightning_prune.evaluation.model_args` for the keys. An unknown key raises a
            `ValueError` listing the valid ones.
    """

    is_simple = True

    def __init__(self, **model_args: Any) -> None:
        super().__init__()
        self.settings = parse_model_args(model_args)  # every check before the model is built
        self._dycoke = self.settings.build_compression()  # DyCoke or another method's callback, or None
        self.module = self.settings.build_module()
        self._default_max_new_tokens = self.module.max_new_tokens
        self._rows: list[dict[str, Any]] = []
        self._warned: set[str] = set()

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    @property
    def efficiency_rows(self) -> list[dict[str, Any]]:
        """One dict per generated sample so far (see `lightning_prune.evaluation.efficiency`)."""
        return list(self._rows)

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy answers, in request order; every request is checked (videos readable) before any generation."""
        parsed = [self._parse(index, request) for index, request in enumerate(requests)]
        groups: dict[tuple, list[VideoRequest]] = defaultdict(list)
        for request in parsed:
            groups[(request.max_new_tokens, tuple(request.until))].append(request)
        answers = [""] * len(parsed)
        for group in groups.values():
            group.sort(key=lambda request: -len(request.context))  # similar lengths together: less padding
            self._generate(group, answers)
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(self._unserved("loglikelihood", requests))

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(self._unserved("generate_until_multi_round", requests))

    def write_efficiency_report(self, path: str | Path | None = None) -> Path | None:
        """Write the report JSON to `path` (default: the `report` model arg); returns the path, or None if none."""
        path = Path(path) if path is not None else self.settings.report
        if path is None:
            return None
        header = {
            "model": MODEL_NAME,
            "config": str(self.settings.config),
            "model_class": f"{self.settings.model_class.__module__}.{self.settings.model_class.__name__}",
            "dycoke": self.settings.dycoke,
            "compression": self.settings.compression,
            "num_frames": self.settings.num_frames,
            "frame_sampling": self.settings.frame_sampling,
            "batch_size": self.settings.batch_size,
            "device": self.settings.device,
        }
        return write_report(path, header, self._rows)

    def clean(self) -> None:
        """lmms-eval's end-of-run hook: write the efficiency report, then release the model."""
        written = self.write_efficiency_report()
        if written is not None:
            rank_zero_info(f"lightning_prune efficiency report: {written}")
        super().clean()

    def _parse(self, index: int, request: Instance) -> VideoRequest:
        parsed, ignored = parse_request(index, request.args, self.task_dict)
        for key in ignored:
            if key not in self._warned:
                self._warned.add(key)
                rank_zero_warn(f"lightning_prune decodes greedily; the task's `{key}` setting is ignored "
                               f"({parsed.where}).")
        return parsed

    def _unserved(self, kind: str, requests: list[Instance]) -> str:
        tasks = sorted({str(request.task_name) for request in requests})
        return (f"`{MODEL_NAME}` serves {_SERVED}; task(s) {tasks} ask for {kind}. Pick a task whose "
                "output_type is generate_until.")

    def _generate(self, group: list[VideoRequest], answers: list[str]) -> None:
        dataset = VideoRequestDataset(group, self.settings.num_frames, self.settings.frame_sampling)
        loader = DataLoader(dataset, batch_size=self.settings.batch_size, num_workers=self.settings.num_workers,
                            collate_fn=collate_video_qa)
        probe, collector = EfficiencyProbe(), MetricsCollector()
        trainer = Trainer(
            **self.settings.trainer_device(),
            logger=collector,
            callbacks=[probe] + ([self._dycoke] if self._dycoke is not None else []),
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
        self.module.max_new_tokens = group[0].max_new_tokens or self._default_max_new_tokens
        try:
            outputs = trainer.predict(self.module, dataloaders=loader)
        finally:
            self.module.max_new_tokens = self._default_max_new_tokens
        by_index = {request.index: request for request in group}
        rows = []
        for batch, (predictions, measured) in enumerate(zip(outputs, probe.batches, strict=True)):
            kept = collector.records.get(batch, {}).get(self._kept_metric) if self._dycoke is not None else None
            for prediction, row in zip(predictions, batch_rows(measured, kept, len(predictions)), strict=True):
                request = by_index[prediction["id"]]
                answers[request.index] = truncate_at_stops(prediction["answer"], request.until)
                rows.append({"task": request.task, "doc_id": request.doc_id, **row})
        self._rows.extend(rows)
        self._log_throughput(rows)

    @property
    def _kept_metric(self) -> str:
        prefix = getattr(self._dycoke, "log_prefix", None)
        return VISUAL_TOKENS_AFTER if prefix is None else f"{prefix}/visual_tokens_after"

    def _log_throughput(self, rows: list[dict[str, Any]]) -> None:
        """Hand the group's figures to lmms-eval, which adds them to its results' `throughput` section."""
        if not rows:
            return
        elapsed = sum(row["generate_s"] / row["batch_size"] for row in rows)
        tokens = sum(row["decode_steps"] + 1 for row in rows)
        summary = summarize(rows)
        extra = {key: summary[key] for key in ("visual_tokens_before", "visual_tokens_after", "prefill_s",
                                               "decode_s_per_token", "peak_memory_mb")}
        log_metrics(elapsed, tokens, tokens / elapsed if elapsed > 0 else 0.0, extra)


def evaluate_video_tasks(
    model: LightningPruneVideoLLM,
    tasks: list[str],
    limit: int | float | None = None,
    include_path: str | list[str] | None = None,
    include_default_tasks: bool = True,
    log_samples: bool = True,
) -> dict[str, Any]:
    """Evaluate `model` on lmms-eval tasks from Python, as the `lmms-eval` command does.

    Args:
        model: e.g. `LightningPruneVideoLLM(config="configs/dycoke/llava_ov_7b.yaml", dycoke=True, report="runs")`.
        tasks: lmms-eval task names, e.g. ["videomme"] or ["lightning_prune_tiny"].
        limit: documents per task (for tests; real numbers use all).
        include_path: extra task folders; the project's own tasks folder is always included.
        include_default_tasks: index lmms-eval's built-in tasks too (off: faster, for local tasks only).
        log_samples: keep per-sample responses in the results (`results["samples"]`).

    Returns:
        lmms-eval's results dict. The efficiency report is then on disk (`report`) and in `model.efficiency_rows`;
        lmms-eval has released the model's network.
    """
    extra = [include_path] if isinstance(include_path, str) else list(include_path or [])
    manager = TaskManager(include_path=[str(TASKS_DIR), *extra], include_defaults=include_default_tasks)
    return simple_evaluate(model=model, tasks=tasks, limit=limit, task_manager=manager, log_samples=log_samples)
