"""`Pruning`: one `fit` runs pretrain -> prune -> retrain. The plan, its arguments' checks, the scoring, the choice
and the pruning itself live in `lightning_prune.pruning` (`arguments.py`, `plan.py`, `engine.py`); this callback
keeps the hooks and the Trainer-side effects: checks against the Trainer, optimizers and retrain recipes, LoRA,
best-tracking restarts, measuring on the data loaders (`_measure.py`), logging and checkpoints. What it has done
so far (its saved state) is one `PruningProgress` (`_progress.py`)."""

from __future__ import annotations

import json
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_prune._checks import raise_if
from lightning_prune.callbacks import _checkpoints, _distributed, _export, _loaders, _lora, _measure, _schedule
from lightning_prune.callbacks._progress import PruningProgress, progress_attribute
from lightning_prune.outcome import MetricNames, final_metrics
from lightning_prune.pruning.arguments import plan_from_arguments
from lightning_prune.pruning.checkpoint import read_record, resolve_target
from lightning_prune.pruning.criteria import CRITERIA
from lightning_prune.pruning.engine import check_plan, prune_step
from lightning_prune.pruning.inputs import to_device

CriterionName = Literal[CRITERIA]  # the registry's names (`pruning/criteria.py`), for the config's type check


class Pruning(Callback):
    """Prune the network at the phase boundary, measure it, and switch the module to its retrain recipe.

    The LightningModule needs nothing of this package: the network is its attribute `target`, called on a batch's
    inputs `x` (batches `(x, y)`; `x[:1]` of the first batch traces the graph unless `example_input_array` is a
    tensor); it may define `loss_fn(outputs, y)` (`taylor`/`oracle`; else cross-entropy), `evaluate_network(network,
    loader, device) -> (loss, acc)` (`pruned/*`; else a classifier's) and `start_retrain()`. At the boundary
    `configure_optimizers` runs again (`trainer.strategy.setup_optimizers`) over the current parameters.

    Pruning happens at the start of epoch `prune_at_epoch` (0 for `prune_at="start"`), after the previous epoch's
    LR-scheduler step. It logs `prune/params|macs_before|after`, `pruned/train_loss|train_acc` (the data's
    `train_eval_dataloader()` if any, else the train loader) and `pruned/<split>_loss|_acc` (first validation
    loader), `prune/indices` as a hyperparameter, `retrain/epoch` each retrain epoch and at the end `final/*`
    (best-accuracy retrain epoch), `last/*` and `last5/*_mean|_std`, read from `acc_key`, `loss_key` and
    `train_loss_key` (one warning lists the logged names if one never is). Also kept on the callback:
    `pruned_indices`, `pruned_metrics`, `retrain_history`, `final_metrics`. A `schedule` prunes in steps (each logs
    `prune/step`, `prune/fraction`, ...; later steps rank only the remaining units; `final/*` counts from the last).

    Checkpoints saved after pruning carry the pruning record: any checkpoint this Trainer loads gets the recorded
    structure before its weights (without a Trainer: `lightning_prune.load_pruned`); a fit resumed between steps
    carries on. With `restart_best`, monitoring `ModelCheckpoint`s and `EarlyStopping`s start afresh at the boundary.

    Args:
        criterion: A name of `pruning.criteria.CRITERIA` (`l1`, `taylor`, `oracle`, `random`, `explicit`, `bn_scale`).
        layers: `{glob pattern over module names: ratio in [0, 1)}`, `floor(ratio * units)` pruned; a segment `a-b`
            is an inclusive range of layer numbers (`model.layers.4-29.mlp`).
        indices: For `explicit`: `{layer name: pruned unit indices}`.
        mode: `physical` (units removed) or `mask` (their dependency groups zeroed and kept at zero).
        prune_at: `"start"`: prune before the first epoch. Exactly one of `prune_at`/`prune_at_epoch`.
        prune_at_epoch: Prune after this many (pretrain) epochs.
        global_pruning: Rank units across all selected layers instead of per layer.
        calibration_batches: Training batches read by `taylor` and `oracle` (per rank under `ddp`, summed).
        seed: Seed of `random`.
        l1_reduction: `sum` or `mean` of the absolute weights within a filter (`l1`).
        target: Attribute of the LightningModule holding the network (`""`: the module); patterns are relative to it.
        measure: Compute `pruned/*` (two full passes over the data).
        acc_key, loss_key, train_loss_key: Logged validation accuracy, validation loss, epoch-mean train loss.
        split: `val`, or `test` when the validation loader is the test split: names `pruned/<split>_*`, `final/...`.
        restart_best: Restart `ModelCheckpoint`/`EarlyStopping` best tracking at the boundary.
        save_pretrained: Write `<log dir>/pruned_hf/` at the end for a transformers model.
        budget: `{"macs": f}` or `{"params": f}`: prune globally (each layer at most its ratio) until the MACs or
            parameters are at most `f` of the unpruned network's; logs `budget/*`.
        schedule: `{steps: n, every_n_epochs: e}` or `{at: [[epoch, fraction], ...]}` (`pruning.schedule`); None:
            one step. Not with `explicit` or `budget`.
        retrain_recipe: After each later step, `restart` (start_retrain + fresh optimizer and LR schedule) or
            `continue` the running recipe (`_schedule.continue_recipe`).
        retrain: `{method: full}` (default) or `{method: lora, r, alpha, dropout, target_modules}` (`_lora.py`;
            checkpoints and `pruned_hf/` hold merged weights). One pruning step only.
        taylor_variant: For `taylor`: `group` (default) or LLM-Pruner's `vectorize`, `param_first`,
            `param_second`, `param_mix`.
        pad_export: When layer sizes differ, write `pruned_hf/` zero-padded to the largest layer (same logits).
        allow_plan_change: Resume from a checkpoint made under another prune plan and prune by this one (by
            default such a resume is refused, naming both plans).
        criterion_options: The criterion class's keywords (`bn_scale`: `{reduction: mean}`; `oracle`:
            `{chunk_size: 8}`); they override `l1_reduction`, `seed`, `indices`, `taylor_variant`.
    """

    def __init__(
        self,
        criterion: CriterionName = "l1",
        layers: dict[str, float] | None = None,
        indices: dict[str, list[int]] | None = None,
        mode: Literal["physical", "mask"] = "physical",
        prune_at: Literal["start"] | None = None,
        prune_at_epoch: int | None = None,
        global_pruning: bool = False,
        calibration_batches: int = 10,
        seed: int = 0,
        l1_reduction: Literal["sum", "mean"] = "sum",
        target: str = "model",
        measure: bool = True,
        acc_key: str = "val/acc",
        loss_key: str = "val/loss",
        train_loss_key: str = "train/loss",
        split: Literal["val", "test"] = "val",
        restart_best: bool = True,
        save_pretrained: bool = True,
        budget: dict[str, float] | None = None,
        schedule: dict[str, Any] | None = None,
        retrain_recipe: Literal["restart", "continue"] = "restart",
        retrain: dict[str, Any] | None = None,
        taylor_variant: Literal["group", "vectorize", "param_first", "param_second", "param_mix"] = "group",
        pad_export: bool = False,
        allow_plan_change: bool = False,
        criterion_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.names = MetricNames(acc=acc_key, loss=loss_key, train_loss=train_loss_key, split=split)
        plan, problems = plan_from_arguments(
            criterion, indices=indices, seed=seed, l1_reduction=l1_reduction, taylor_variant=taylor_variant,
            criterion_options=criterion_options, schedule=schedule, budget=budget, layers=layers, mode=mode,
            prune_at=prune_at, prune_at_epoch=prune_at_epoch, target=target, global_pruning=global_pruning,
            calibration_batches=calibration_batches)
        problems += self.names.problems() + _schedule.recipe_problems(retrain_recipe)
        problems += _lora.retrain_problems(retrain, schedule)
        if problems:
            raise ValueError(" ".join(problems))
        self.prune_plan, self.plan = plan, plan.record()  # the record goes into checkpoints, compared on resume
        self.criterion, self.mode, self.target, self.measure = criterion, mode, target, measure
        self.layers, self.indices, self.budget = plan.layers, plan.indices, plan.budget_dict()
        self.prune_epoch, self.schedule, self.retrain_recipe = plan.prune_epoch, plan.schedule_dict(), retrain_recipe
        self.steps = plan.steps()
        self.restart_best, self.save_pretrained, self.pad_export = restart_best, save_pretrained, pad_export
        self.allow_plan_change, self.lora_settings = allow_plan_change, _lora.lora_settings(retrain)
        self.final_metrics: dict[str, float] = {}
        self._progress = PruningProgress(_measure.RetrainRecorder(self.names))  # what `state_dict` saves
        self._checked_plan = self._checked_names = self._validated = self._said_hparams = False
        self._lora: _lora.LoraAdapters | None = None

    pruned_indices = progress_attribute(
        "engine.indices", "`{layer: pruned indices}` so far, cumulative, in the unpruned network's numbering.")
    retrain_history = progress_attribute(
        "recorder.history", "Per retrain epoch (from the last step) `{epoch, <split>_acc, <split>_loss, train_loss}`.")
    pruned_metrics = progress_attribute("pruned_metrics", "The last step's `prune/*`, `budget/*` and `pruned/*`.")
    steps_done = progress_attribute("steps_done", "Pruning steps taken so far.")
    step_records = progress_attribute("step_records", "Per step `{epoch, fraction, indices}` (original numbering).")
    _pruned_at = progress_attribute("recorder.start_epoch", "The last step's epoch (None: not pruned yet).")
    _guard = progress_attribute("engine.guard", "Mask mode after pruning: keeps the removed units at zero.")

    @property
    def pruned(self) -> bool:
        """Whether this run has pruned (also after resuming from a checkpoint taken after pruning)."""
        return self._progress.pruned

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(criterion=self.criterion, layers=self.layers, mode=self.mode)

    # ----------------------------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        _checkpoints.install_structure_restore(trainer, lambda: self.pruned)
        if stage != "fit" or self.pruned:
            return
        resolve_target(pl_module, self.target)
        _distributed.check_strategy(trainer.strategy, self.mode)
        raise_if(_schedule.epochs_problem(trainer.max_epochs, self.steps, self.prune_epoch))
        _checkpoints.warn_weights_only(trainer)
        if _loaders.has_train_data(trainer):  # else (loaders passed to `fit`) the checks wait for on_train_start
            self._check_plan(trainer, pl_module)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.pruned:
            self._check_plan(trainer, pl_module)
            raise_if(_schedule.steps_problem(trainer, self.steps[-1].epoch))

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.pruned and self.mode == "mask" and self._guard is None:  # resumed after pruning
            network = resolve_target(pl_module, self.target)
            self._progress.restore_guard(network, self._example_input(trainer, pl_module))

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.steps_done < len(self.steps) and trainer.current_epoch >= self.steps[self.steps_done].epoch:
            self._prune(trainer, pl_module)
        if self.pruned:
            pl_module.log("retrain/epoch", float(trainer.current_epoch - self._pruned_at), on_epoch=True)

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        if self._guard is not None:
            self._guard.reapply()

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._validated = self._validated or not trainer.sanity_checking

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check_names_logged(trainer)
        self._progress.recorder.record(trainer)  # nothing before pruning

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.retrain_history:
            self.final_metrics = final_metrics(self._progress.recorder.outcome())
            _log_to_loggers(trainer, self.final_metrics)
        self._guard = _lora.merge_lora(self._lora, self._guard)
        if self.pruned and self.save_pretrained and trainer.is_global_zero:
            example = self._example_input(trainer, pl_module)
            _export.save_pruned_hf(trainer, resolve_target(pl_module, self.target), example, self.pruned_indices,
                                   self.mode, pad=self.pad_export)

    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self._said_hparams = _checkpoints.plain_hyperparameters(checkpoint, self._said_hparams)
        _lora.merge_into_checkpoint(self._lora, checkpoint, self.target)
        checkpoint.setdefault("lightning_prune", {})["plan"] = self.plan  # compared when a fit resumes from it
        if self.pruned:
            record = self._progress.checkpoint_record(self.target, self.mode, self.criterion)
            checkpoint["lightning_prune"]["pruning"] = record

    @override
    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if not self.allow_plan_change:
            recorded = (checkpoint.get("lightning_prune") or {}).get("plan")
            raise_if(_checkpoints.plan_problem(recorded, self.plan, trainer.ckpt_path))
        record = read_record(checkpoint)
        if record and record.get("phase") == "retrain":
            _measure.start_retrain(pl_module)  # before the optimizers are built and their state is loaded
        if record and record.get("phase") == "retrain" and self.lora_settings and trainer.state.fn == "fit":
            raise_if(_lora.resume_problem(self.mode))
            self._start_lora(trainer, resolve_target(pl_module, self.target))  # the weights (merged) are in

    @override
    def state_dict(self) -> dict[str, Any]:
        return self._progress.to_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._progress = PruningProgress.from_dict(state_dict, self.names, guard=self._guard)  # a guard stays

    # ------------------------------------------------------------------------------------------- internals
    def _check_plan(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Before any training step: the criterion has its data, and the layers/ratios/indices fit the network."""
        if self._checked_plan:
            return
        if self.prune_plan.needs_data:
            _distributed.check_train_data(self.criterion, _loaders.has_train_data(trainer))  # raises on every rank
        network = resolve_target(pl_module, self.target)
        if self.lora_settings:
            _lora.check_targets(network, self.lora_settings)
        check_plan(network, self._example_input(trainer, pl_module), self.prune_plan, self.steps)
        self._checked_plan = True

    def _check_names_logged(self, trainer: Trainer) -> None:
        """After the first validation epoch: one warning if a named metric was never logged."""
        if not self._checked_names and self._validated:
            self._checked_names = True
            _measure.warn_unlogged("Pruning", self.names, trainer)

    def _example_input(self, trainer: Trainer, pl_module: LightningModule) -> Any:
        example, self._progress.example = _loaders.example_input(trainer, pl_module, self._progress.example)
        return to_device(example, pl_module.device)

    def _prune(self, trainer: Trainer, pl_module: LightningModule) -> None:
        network = resolve_target(pl_module, self.target)
        example = self._example_input(trainer, pl_module)
        first, step = self.steps_done == 0, self.steps[self.steps_done]
        batches = lambda: _loaders.calibration_batches(  # noqa: E731
            trainer, self.prune_plan.calibration_batches, pl_module.device)
        result = prune_step(network, example, self.prune_plan, self.steps, self.steps_done, self._progress.engine,
                            batches, _measure.loss_function(pl_module))
        self._progress.engine, metrics, indices = result.state, result.metrics, result.state.indices
        if result.inexact_warning():
            rank_zero_warn(result.inexact_warning())
        if self.mode == "physical":
            _distributed.rebuild_wrapper(trainer)  # DDP's buckets hold the replaced parameters
        if first and self.lora_settings:
            metrics["retrain/trainable_params"] = float(self._start_lora(trainer, network))
        self._progress.step_done(trainer.current_epoch, step.fraction, result.new)

        _schedule.next_recipe(trainer, pl_module, first or self.retrain_recipe == "restart", self.mode)
        if self.restart_best:
            _checkpoints.restart_best(trainer)

        if self.measure:
            split = self.names.split
            metrics.update(_measure.prefixed(_measure.measure(trainer, network, split, "Pruning", warn=True), "pruned"))
        self.pruned_metrics = metrics
        _log_to_loggers(trainer, metrics)
        for logger in trainer.loggers:
            logger.log_hyperparams({"prune/indices": json.dumps(indices)})
        _distributed.log_rank_indices(indices)
        rank_zero_info(result.summary(self.prune_plan, len(self.steps), trainer.current_epoch))

    def _start_lora(self, trainer: Trainer, network: torch.nn.Module) -> int:
        """Inject the LoRA adapters (mask mode: their rows/columns of removed units masked too); trainable count."""
        self._lora, self._guard = _lora.start_lora(network, self.lora_settings, self._guard)
        _distributed.rebuild_wrapper(trainer)
        return self._lora.trainable_parameters()


def _log_to_loggers(trainer: Trainer, metrics: dict[str, float]) -> None:
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)

