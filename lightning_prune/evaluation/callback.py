"""`LmEvaluation`: lm-eval tasks and paper-style perplexity of a causal LM before pruning, right after, and at the end.

Add it beside `Pruning` (order does not matter). It finds the `Pruning` callback of the Trainer and measures:

- `before`: the unpruned model, when pretraining is over (at the start of training for `prune_at: start`, else at
  the end of the epoch before pruning), logged as `unpruned/lm_eval/<task>/<metric>` and `unpruned/ppl/<name>`;
- `pruned`: right after the first pruning step, before any retraining step (`pruned/lm_eval/...`, `pruned/ppl/...`);
- `final`: at the end of the fit, after retraining (LoRA or full), as `lm_eval/<task>/<metric>` and `ppl/<name>`.

Without a `Pruning` callback `before` runs at the start of training and `final` at the end. Metrics are `acc` and
`acc_norm` where a task has both (both are logged, so a number can be put next to either kind of published table).
Everything is checked before training starts: task names (close names listed), the tokenizer, the perplexity
files (present, holding at least one window). Results are kept on the callback as `results[stage]`. Only the
global-zero process evaluates (lm-eval's own multi-process mode is not used here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_prune._checks import is_int
from lightning_prune._paths import resolve_path
from lightning_prune.evaluation.lm_harness import check_tasks, evaluate_lm, language_model, logged_names
from lightning_prune.evaluation.perplexity import (
    PRESETS,
    check_arguments,
    context_length,
    encode,
    load_texts,
    perplexity_of_ids,
)

STAGES = ("before", "pruned", "final")
_PREFIX = {"before": "unpruned/", "pruned": "pruned/", "final": ""}


class LmEvaluation(Callback):
    """lm-evaluation-harness tasks and perplexity at the phases of a pruning fit.

    Args:
        tasks: lm-eval task names (e.g. `lightning_prune_tiny_lm`, or LLM-Pruner's seven: boolq, piqa, hellaswag,
            winogrande, arc_easy, arc_challenge, openbookqa); empty: perplexity only.
        perplexity: `{name: local test-split file}` (e.g. `{wikitext2: .../test-00000-of-00001.parquet}`; a
            shipped file, `lightning_prune/data/assets/...`, resolves from any folder).
        perplexity_preset: `llm_pruner` (128-token windows), `wanda` or `sparsegpt` (context-length windows).
        perplexity_seq_len: Window length overriding the preset's.
        tokenizer: Tokenizer folder or Hub id; None takes the DataModule's `tokenizer` (as `TextDataModule` has).
        stages: Which of `before`, `pruned`, `final` to measure.
        batch_size: lm-eval requests (and perplexity windows) per forward pass.
        limit: At most this many documents per task (quick looks; published numbers use all).
        include_path: Extra folder of lm-eval task YAMLs.
    """

    def __init__(
        self,
        tasks: list[str] | None = None,
        perplexity: dict[str, str] | None = None,
        perplexity_preset: Literal["llm_pruner", "wanda", "sparsegpt"] = "llm_pruner",
        perplexity_seq_len: int | None = None,
        tokenizer: str | None = None,
        stages: list[Literal["before", "pruned", "final"]] | None = None,
        batch_size: int = 8,
        limit: int | None = None,
        include_path: str | None = None,
    ) -> None:
        super().__init__()
        problems = []
        self.tasks = list(tasks or [])
        self.perplexity_files = {k: resolve_path(v) for k, v in (perplexity or {}).items()}
        if not self.tasks and not self.perplexity_files:
            problems.append("`tasks` or `perplexity` must be given, got neither (nothing to evaluate).")
        if perplexity_preset not in PRESETS:
            problems.append(f"`perplexity_preset` must be one of {list(PRESETS)}, got {perplexity_preset!r}.")
        self.stages = list(STAGES) if stages is None else list(stages)
        if not self.stages or any(stage not in STAGES for stage in self.stages):
            problems.append(f"`stages` must be a non-empty list of {list(STAGES)}, got {stages!r}.")
        if not is_int(batch_size, 1):
            problems.append(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")
        if problems:
            raise ValueError(" ".join(problems))
        self.preset, self.seq_len = perplexity_preset, perplexity_seq_len
        self.tokenizer_name = None if tokenizer is None else resolve_path(tokenizer)
        self.batch_size, self.limit, self.include_path = batch_size, limit, include_path
        self.results: dict[str, dict[str, float]] = {}
        self._tokenizer = None
        self._ids: dict[str, torch.Tensor] = {}
        self._window: int | None = None

    # ----------------------------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or self._tokenizer is not None:
            return
        for name, path in self.perplexity_files.items():  # here, so that a config parses on another machine
            if not Path(path).is_file():
                raise FileNotFoundError(f"`perplexity[{name!r}]` must be an existing file, got {path!r}.")
        if self.tasks:
            check_tasks(self.tasks, self.include_path)
        self._tokenizer = self._resolve_tokenizer(trainer)
        model = language_model(pl_module)
        self._window = self.seq_len or PRESETS[self.preset].seq_len or context_length(model)
        for name, path in self.perplexity_files.items():
            ids = encode(self._tokenizer, load_texts(path), PRESETS[self.preset].join)
            try:
                check_arguments(len(ids), self._window, "non_overlapping", None)
            except ValueError as error:
                raise ValueError(f"`perplexity[{name!r}]` ({path}): {error}") from None
            self._ids[name] = ids

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pruning = _pruning_callback(trainer)
        if pruning is None or (not pruning.pruned and pruning.prune_epoch == trainer.current_epoch):
            self._measure("before", trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pruning = _pruning_callback(trainer)
        if pruning is not None and not pruning.pruned and trainer.current_epoch + 1 == pruning.prune_epoch:
            self._measure("before", trainer, pl_module)

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        pruning = _pruning_callback(trainer)
        if pruning is not None and pruning.pruned:
            self._measure("pruned", trainer, pl_module)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._measure("final", trainer, pl_module)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"results": self.results}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.results = dict(state_dict["results"])

    # ------------------------------------------------------------------------------------------- internals
    def _resolve_tokenizer(self, trainer: Trainer):
        name = self.tokenizer_name
        if name is None:
            datamodule = getattr(trainer, "datamodule", None)
            loaded = getattr(datamodule, "tokenizer", None)
            if loaded is not None:
                return loaded
            name = getattr(datamodule, "tokenizer_name", None)
        if name is None:
            raise ValueError("`tokenizer` must name the model's tokenizer folder, got None and a DataModule "
                             "without a `tokenizer`.")
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(name))

    def evaluate(self, pl_module: LightningModule) -> dict[str, float]:
        """Every configured measurement of the module's model now: `{lm_eval/<task>/<metric>, ppl/<name>}`."""
        model = language_model(pl_module)
        metrics: dict[str, float] = {}
        if self.tasks:
            results = evaluate_lm(model, self._tokenizer, self.tasks, batch_size=self.batch_size, limit=self.limit,
                                  include_path=self.include_path)
            metrics.update(logged_names(results))
        for name, ids in self._ids.items():
            metrics[f"ppl/{name}"] = perplexity_of_ids(model, ids, self._window, batch_size=self.batch_size)
        return metrics

    def _measure(self, stage: str, trainer: Trainer, pl_module: LightningModule) -> None:
        if stage not in self.stages or stage in self.results or trainer.sanity_checking:
            return
        if not trainer.is_global_zero:
            self.results[stage] = {}
            return
        measured = {f"{_PREFIX[stage]}{key}": value for key, value in self.evaluate(pl_module).items()}
        self.results[stage] = measured
        for logger in trainer.loggers:
            logger.log_metrics(measured, step=trainer.global_step)
        rank_zero_info(f"LmEvaluation ({stage}): " + ", ".join(f"{k} {v:.4g}" for k, v in measured.items()))


def _pruning_callback(trainer: Trainer):
    from lightning_prune.callbacks.pruning import Pruning

    return next((cb for cb in trainer.callbacks if isinstance(cb, Pruning)), None)
