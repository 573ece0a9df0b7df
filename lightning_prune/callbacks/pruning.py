"""`Pruning`: one `fit` runs pretrain -> prune -> retrain. The plan, the scoring, the choice and the pruning itself
live in `lightning_prune.pruning` (`plan.py`, `engine.py`); this callback keeps the hooks and the Trainer-side
effects: checks against the Trainer, optimizers and retrain recipes, LoRA, best-tracking restarts, measuring on the
data loaders (`_measure.py`), logging and checkpoints."""

from __future__ import annotations

import json
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_prune.callbacks import _distributed, _loaders, _lora, _schedule
from lightning_prune.callbacks._checkpoints import (
    install_structure_restore,
    plain_hyperparameters,
    plan_problem,
    pruning_record,
    restart_best,
)
from lightning_prune.callbacks._export import save_pruned_hf
from lightning_prune.callbacks._measure import (
    RetrainRecorder,
    loss_function,
    measure,
    prefixed,
    start_retrain,
    warn_unlogged,
)
from lightning_prune.outcome import MetricNames, final_metrics
from lightning_prune.pruning.build import build_structure
from lightning_prune.pruning.checkpoint import read_record, resolve_target
from lightning_prune.pruning.criteria import CRITERIA, build_criterion
from lightning_prune.pruning.engine import PruneState, check_plan, prune_step
from lightning_prune.pruning.importance import TAYLOR_VARIANTS
from lightning_prune.pruning.inputs import to_device
from lightning_prune.pruning.masks import MaskGuard
from lightning_prune.pruning.plan import PrunePlan

CriterionName = Literal[CRITERIA]  # the registry's names (`pruning/criteria.py`), for the config's type check
# The flat arguments that are a criterion's options (kept for the shipped configs): criterion -> (option, argument).
_FLAT_OPTIONS = {"l1": ("reduction", "l1_reduction"), "random": ("seed", "seed"), "explicit": ("indices", "indices"),
                 "taylor": ("variant", "taylor_variant")}


class Pruning(Callback):
    """Prune the network at the phase boundary, measure it, and switch the module to its retrain recipe.

    Add it to the callbacks of a Trainer; the LightningModule needs nothing of this package:
      - the network to prune is its attribute `target` (default `model`; `""` = the module itself; a
        `torch.compile`d network is pruned through the module it wraps), called on a batch's inputs `x` where
        training batches are `(x, y)`; the first training batch's `x[:1]` traces the graph unless the module has an
        `example_input_array` tensor; `loss_fn(outputs, y)` if it has one (else cross-entropy) for `taylor`/
        `oracle`, and `evaluate_network(network, loader, device) -> (loss, acc)` for `pruned/*` (else a classifier's);
      - at the boundary `configure_optimizers` is called again (through `trainer.strategy.setup_optimizers`) and
        builds a fresh optimizer and schedule over the current parameters; a module may also define
        `start_retrain()` to switch to a retrain recipe first;
      - it logs an accuracy, a loss (of its validation loader) and an epoch-mean train loss: `acc_key`, `loss_key`,
        `train_loss_key` name them (default `val/acc`, `val/loss`, `train/loss`; a `_epoch` suffix is accepted). If
        one is never logged, one warning after the first validation epoch lists the names that were.

    Checkpoints: those saved after pruning carry the pruning record, and any checkpoint this Trainer loads
    (`fit` resume, `validate`/`test`/`predict` with a path, `"best"`, `"last"`) gets the recorded structure before
    its weights load; without a Trainer, `lightning_prune.load_pruned(ModuleClass, path, **init_kwargs)`. With
    `restart_best` (default), every monitoring `ModelCheckpoint` and every `EarlyStopping` starts afresh at the
    boundary, so `ckpt_path="best"` names the best *pruned* model. nn.Module hyperparameters are left out of
    checkpoints (they could not be loaded with `weights_only=True`).

    Pruning happens at the start of a training epoch (epoch `prune_at_epoch`, or 0 for `prune_at="start"`), after
    the previous epoch's LR-scheduler step, so the fresh retrain schedule starts at its epoch 0. Then:
    `prune/params_before|after`, `prune/macs_before|after` and (with `measure`) `pruned/train_loss|train_acc`
    (the training split via the data's `train_eval_dataloader()` if any, else the train loader; eval mode) and
    `pruned/val_loss|val_acc` (the first validation loader, the split `val/*` is logged from) go to every logger;
    `prune/indices` as a JSON hyperparameter. During retraining `retrain/epoch` is logged each epoch, and at the end
    `final/val_acc|val_loss|train_loss` (best-accuracy retrain epoch, `final/epoch`), `last/...` (last epoch) and
    `last5/..._mean|_std` (last 5 epochs); `val` is `split`. Everything is also kept on the callback:
    `pruned_indices`, `pruned_metrics`, `retrain_history`, `final_metrics`.

    Iterative schedules (`schedule`, see `lightning_prune.pruning.schedule`): step k (from 1) prunes at the start of
    its epoch until `floor(ratio * fraction_k * units_original)` units of each layer are gone in total; later steps
    rank only the remaining units. Each step logs `prune/step`, `prune/fraction`, `prune/*_before|after`,
    `pruned/*` and `prune/indices` (cumulative, original numbering; also `pruned_indices`); `retrain/epoch`,
    `retrain_history` and `final/|last/|last5/` count from the LAST step. Checkpoints record every step, so a fit
    resumed between steps restores the structure so far and carries on with the schedule.

    Args:
        criterion: A name of `lightning_prune.pruning.criteria.CRITERIA`: `l1`, `taylor`, `oracle`, `random`,
            `explicit` or `bn_scale` (|BatchNorm gamma| over the unit's group).
        layers: `{glob pattern over module names: ratio in [0, 1)}`; `floor(ratio * units)` units are pruned.
            A segment `a-b` is an inclusive range of layer numbers (`model.layers.4-29.mlp`).
        indices: For `explicit`: `{layer name: pruned unit indices}`.
        mode: `physical` (units removed) or `mask` (their dependency groups zeroed and kept at zero).
        prune_at: `"start"`: prune before the first epoch (pretrained weights).
        prune_at_epoch: Prune after this many (pretrain) epochs. Exactly one of `prune_at`/`prune_at_epoch`.
        global_pruning: Rank units across all selected layers (the issue's `global: true`) instead of per layer.
        calibration_batches: Training batches read by `taylor` and `oracle` (per rank under `ddp`, where the
            statistics are summed over all ranks; see `lightning_prune.pruning.distributed`).
        seed: Seed of the `random` criterion.
        l1_reduction: `sum` or `mean` of the absolute weights within a filter.
        target: Attribute of the LightningModule holding the network; patterns are relative to it.
        measure: Compute `pruned/*` loss and accuracy (two full passes over the data).
        budget: `{"macs": f}` or `{"params": f}`: instead of pruning each layer's ratio, prune globally over the
            selected layers (lowest scores first, each layer at most its ratio) until the measured MACs or
            parameters are at most `f` of the unpruned network's, within one unit; `budget/*` is logged.
        acc_key: Logged accuracy of the validation loader.
        loss_key: Logged loss of the validation loader.
        train_loss_key: Logged epoch-mean training loss.
        split: `val`, or `test` when the validation loader is the test split (as in the oracle-pruning study):
            names `pruned/<split>_*`, `final/<split>_*` and the history fields.
        restart_best: Restart `ModelCheckpoint`/`EarlyStopping` best tracking at the boundary.
        save_pretrained: Write `<log dir>/pruned_hf/` at the end for a transformers model (`from_pretrained`).
        schedule: Iterative pruning, one of two forms: `{steps: n, every_n_epochs: e}` (fractions k/n, every e
            epochs from the prune epoch) or `{at: [[epoch, fraction], ...]}` (the first epoch = the prune epoch,
            fractions increasing in (0, 1]). None: one step. Not with `explicit` or `budget`.
        retrain_recipe: After each later step, `restart` (start_retrain + a fresh optimizer and LR schedule, as
            at the first step) or `continue`: the recipe begun at the first step goes on. Mask mode keeps the
            optimizer (momentum) and schedulers; physical mode builds the optimizer anew over the smaller
            parameters (zero moments) and gives each LR scheduler back its state (epoch, last LR).
        retrain: `{method: full}` (default: every weight retrains) or `{method: lora, r, alpha, dropout,
            target_modules}`: LoRA adapters (peft) on the pruned network, defaults r 8, alpha 16, dropout 0.05 on
            q/k/v/o/gate/down/up (LLM-Pruner's `post_training.py`); checkpoints hold merged weights, and the
            adapters are merged before `pruned_hf/` is written (see `callbacks/_lora.py`). One pruning step only.
        taylor_variant: For `taylor`: `group` (default: `(sum over the unit's group of g * w)^2` per batch) or
            LLM-Pruner's `vectorize`, `param_first`, `param_second`, `param_mix` (`pruning.importance`).
        pad_export: When layer sizes differ (layer ranges, global ranking), write `pruned_hf/` zero-padded to the
            largest layer (same logits, loads with `from_pretrained`, e.g. for `lm_eval --model hf`) instead of
            nothing (`pruning/hf_padding.py`).
        criterion_options: Options of the criterion, by its class's keywords (`bn_scale`: `{reduction: mean}`;
            `oracle`: `{chunk_size: 8}`); they override the flat `l1_reduction`, `seed`, `indices`, `taylor_variant`.
        allow_plan_change: Resume from a checkpoint made under another prune plan (target, criterion, mode,
            layers, indices, prune epoch, schedule, global pruning, budget) and prune by this one; by default
            such a resume is refused, naming both plans.
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
        flat = {"l1_reduction": l1_reduction, "seed": seed, "indices": indices, "taylor_variant": taylor_variant}
        option, argument = _FLAT_OPTIONS.get(criterion, (None, None))
        options = {option: flat[argument]} if option else {}
        if criterion == "explicit" and isinstance(indices, dict):
            options["indices"] = {name: list(idxs) for name, idxs in indices.items()}
        self.prune_plan = PrunePlan.from_arguments(
            criterion, {**options, **(criterion_options or {})}, schedule, budget, layers=dict(layers or {}),
            mode=mode, prune_at=prune_at, prune_at_epoch=prune_at_epoch, target=target, global_pruning=global_pruning,
            calibration_batches=calibration_batches, given_options=bool(criterion_options))
        problems = self.prune_plan.problems() + self.names.problems()
        if indices and criterion != "explicit":
            problems.append(f"`indices` must be None unless criterion is 'explicit', got criterion {criterion!r}.")
        if criterion != "l1" and l1_reduction not in ("sum", "mean"):
            problems.append(f"`l1_reduction` must be one of ['sum', 'mean'], got {l1_reduction!r}.")
        if retrain_recipe not in _schedule.RECIPES:
            problems.append(f"`retrain_recipe` must be one of {list(_schedule.RECIPES)}, got {retrain_recipe!r}.")
        problems += _lora.retrain_problems(retrain)
        if _lora.lora_settings(retrain) and schedule:
            problems.append("`retrain.method` 'lora' must be used with one pruning step, got a `schedule`.")
        if criterion != "taylor" and taylor_variant not in TAYLOR_VARIANTS:
            problems.append(f"`taylor_variant` must be one of {list(TAYLOR_VARIANTS)}, got {taylor_variant!r}.")
        if problems:
            raise ValueError(" ".join(problems))
        plan = self.prune_plan
        self.criterion, self.mode, self.target, self.measure = criterion, mode, target, measure
        self.layers, self.indices, self.budget = plan.layers, plan.indices, plan.budget_dict()
        self.prune_epoch, self.schedule, self.retrain_recipe = plan.prune_epoch, plan.schedule_dict(), retrain_recipe
        self.steps = plan.steps()
        self.steps_done = 0
        self.step_records: list[dict[str, Any]] = []  # per step: epoch, fraction, its indices (original numbering)
        self.restart_best, self.save_pretrained, self.pad_export = restart_best, save_pretrained, pad_export
        self.pruned_metrics: dict[str, float] = {}
        self.final_metrics: dict[str, float] = {}
        self._recorder = RetrainRecorder(self.names)
        self._state = PruneState()
        self._example: dict[str, Any] | None = None  # {"shape", "dtype"} of the tracing input
        self._checked_plan = self._checked_names = self._validated = self._said_hparams = False
        self.lora_settings = _lora.lora_settings(retrain)
        self._lora: _lora.LoraAdapters | None = None
        self.allow_plan_change = allow_plan_change
        self.plan = plan.record()  # recorded in checkpoints, compared when a fit resumes

    @property
    def pruned(self) -> bool:
        """Whether this run has pruned (also after resuming from a checkpoint taken after pruning)."""
        return self._recorder.start_epoch is not None

    @property
    def pruned_indices(self) -> dict[str, list[int]]:
        """`{layer: pruned indices}` so far, cumulative, in the unpruned network's numbering."""
        return self._state.indices

    @pruned_indices.setter
    def pruned_indices(self, indices: dict[str, list[int]]) -> None:
        self._state.indices = indices

    @property
    def retrain_history(self) -> list[dict[str, float]]:
        """Per retrain epoch (from the last step) `{"epoch", "<split>_acc", "<split>_loss", "train_loss"}`."""
        return self._recorder.history

    @retrain_history.setter
    def retrain_history(self, history: list[dict[str, float]]) -> None:
        self._recorder.history = history

    @property
    def _pruned_at(self) -> int | None:
        return self._recorder.start_epoch

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(criterion=self.criterion, layers=self.layers, mode=self.mode)

    # ----------------------------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        install_structure_restore(trainer, lambda: self.pruned)
        if stage != "fit" or self.pruned:
            return
        resolve_target(pl_module, self.target)
        _distributed.check_strategy(trainer.strategy, self.mode)
        _raise_if(_schedule.epochs_problem(trainer.max_epochs, self.steps, self.prune_epoch))
        if any(isinstance(cb, ModelCheckpoint) and cb.save_weights_only for cb in trainer.callbacks):
            rank_zero_warn("Pruning: `save_weights_only` checkpoints carry no pruning record and cannot be restored.")
        if _loaders.has_train_data(trainer):  # else (loaders passed to `fit`) the checks wait for on_train_start
            self._check_plan(trainer, pl_module)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.pruned:
            self._check_plan(trainer, pl_module)
            _raise_if(_schedule.steps_problem(trainer, self.steps[-1].epoch))

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.pruned and self.mode == "mask" and self._state.guard is None:  # resumed after pruning
            network = resolve_target(pl_module, self.target)
            structure = build_structure(network, self._example_input(trainer, pl_module))
            self._state.guard = MaskGuard(network, structure.parameter_masks(self.pruned_indices))

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.steps_done < len(self.steps) and trainer.current_epoch >= self.steps[self.steps_done].epoch:
            self._prune(trainer, pl_module)
        if self.pruned:
            pl_module.log("retrain/epoch", float(trainer.current_epoch - self._pruned_at), on_epoch=True)

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        if self._state.guard is not None:
            self._state.guard.reapply()

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._validated = self._validated or not trainer.sanity_checking

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check_names_logged(trainer)
        if not self.pruned:
            return
        self._recorder.record(trainer)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.retrain_history:
            self.final_metrics = final_metrics(self._recorder.outcome())
            _log_to_loggers(trainer, self.final_metrics)
        self._state.guard = _lora.merge_lora(self._lora, self._state.guard)
        if self.pruned and self.save_pretrained and trainer.is_global_zero:
            example = self._example_input(trainer, pl_module)
            save_pruned_hf(trainer, resolve_target(pl_module, self.target), example, self.pruned_indices, self.mode,
                           pad=self.pad_export)

    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self._said_hparams = plain_hyperparameters(checkpoint, self._said_hparams)
        if self._lora is not None and not self._lora.merged:  # checkpoints hold merged weights
            checkpoint["state_dict"] = self._lora.merged_state_dict(checkpoint["state_dict"], _prefix(self.target))
        checkpoint.setdefault("lightning_prune", {})["plan"] = self.plan  # compared when a fit resumes from it
        if self.pruned:
            checkpoint["lightning_prune"]["pruning"] = pruning_record(
                self.target, self.mode, self.criterion, self.pruned_indices, self._example, self.step_records,
                self._state.history)

    @override
    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if not self.allow_plan_change:
            _raise_if(plan_problem((checkpoint.get("lightning_prune") or {}).get("plan"), self.plan, trainer.ckpt_path))
        record = read_record(checkpoint)
        if record and record.get("phase") == "retrain":
            start_retrain(pl_module)  # before the optimizers are built and their state is loaded
        if record and record.get("phase") == "retrain" and self.lora_settings and trainer.state.fn == "fit":
            if self.mode == "mask":
                raise ValueError("`retrain.method` 'lora' must start from the pruning step in mask mode, got a "
                                 "resumed retrain: resume in physical mode, or retrain from the pruned checkpoint.")
            self._start_lora(trainer, resolve_target(pl_module, self.target))  # the weights (merged) are in

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "pruned_at": self._pruned_at, "pruned_indices": self.pruned_indices, "example": self._example,
            "history": self._state.history, "pruned_metrics": self.pruned_metrics,
            "retrain_history": self.retrain_history, "steps_done": self.steps_done, "step_records": self.step_records,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._recorder.start(state_dict["pruned_at"])
        self._recorder.history.extend(state_dict["retrain_history"])
        self._state.indices, self._state.history = state_dict["pruned_indices"], state_dict["history"]
        self._example = state_dict["example"]
        self.pruned_metrics = state_dict["pruned_metrics"]
        # states saved before schedules existed: one step, done once pruned
        self.steps_done = state_dict.get("steps_done", int(self._pruned_at is not None))
        self.step_records = state_dict.get("step_records", [])

    # ------------------------------------------------------------------------------------------- internals
    def _check_plan(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Before any training step: the criterion has its data, and the layers/ratios/indices fit the network."""
        if self._checked_plan:
            return
        if build_criterion(self.criterion, **self.prune_plan.criterion.options).needs_data:
            _distributed.check_train_data(self.criterion, _loaders.has_train_data(trainer))  # raises on every rank
        network = resolve_target(pl_module, self.target)
        if self.lora_settings:
            _lora.check_targets(network, self.lora_settings)
        check_plan(network, self._example_input(trainer, pl_module), self.prune_plan,
                   self.steps)
        self._checked_plan = True

    def _check_names_logged(self, trainer: Trainer) -> None:
        """After the first validation epoch: one warning if a named metric was never logged."""
        if not self._checked_names and self._validated:
            self._checked_names = True
            warn_unlogged("Pruning", self.names, trainer)

    def _example_input(self, trainer: Trainer, pl_module: LightningModule) -> Any:
        example, self._example = _loaders.example_input(trainer, pl_module, self._example)
        return to_device(example, pl_module.device)

    def _prune(self, trainer: Trainer, pl_module: LightningModule) -> None:
        network = resolve_target(pl_module, self.target)
        example = self._example_input(trainer, pl_module)
        first, step = self.steps_done == 0, self.steps[self.steps_done]
        batches = lambda: _loaders.calibration_batches(  # noqa: E731
            trainer, self.prune_plan.calibration_batches, pl_module.device)
        result = prune_step(network, example, self.prune_plan, self.steps, self.steps_done, self._state, batches,
                            loss_function(pl_module))
        self._state, metrics, indices = result.state, result.metrics, result.state.indices
        if result.inexact:
            rank_zero_warn(
                f"Pruning: masking {result.inexact} is not exactly removal (a LayerNorm/GroupNorm spans them, as for "
                "a ViT's embedding dimension and every ConvNeXt channel layer)."
            )
        if self.mode == "physical":
            _distributed.rebuild_wrapper(trainer)  # DDP's buckets hold the replaced parameters
        if first and self.lora_settings:
            metrics["retrain/trainable_params"] = float(self._start_lora(trainer, network))
        self._recorder.start(trainer.current_epoch)
        self.step_records.append({"epoch": trainer.current_epoch, "fraction": step.fraction, "indices": result.new})
        self.steps_done += 1

        if first or self.retrain_recipe == "restart":
            start_retrain(pl_module)
            trainer.strategy.setup_optimizers(trainer)  # fresh optimizer + schedule over the current parameters
        else:
            _schedule.continue_recipe(trainer, self.mode)
        if self.restart_best:
            restart_best(trainer)

        if self.measure:
            split = self.names.split
            metrics.update(prefixed(measure(trainer, network, split, "Pruning", warn=True), "pruned"))
        self.pruned_metrics = metrics
        _log_to_loggers(trainer, metrics)
        for logger in trainer.loggers:
            logger.log_hyperparams({"prune/indices": json.dumps(indices)})
        _distributed.log_rank_indices(indices)
        rank_zero_info(
            f"Pruning ({self.criterion}, {self.mode}) step {self.steps_done}/{len(self.steps)} at epoch "
            f"{trainer.current_epoch}: "
            f"{metrics['prune/params_before']:,} -> {metrics['prune/params_after']:,} parameters; "
            + ", ".join(f"{name}: {len(idxs)}" for name, idxs in indices.items())
        )

    def _start_lora(self, trainer: Trainer, network: torch.nn.Module) -> int:
        """Inject the LoRA adapters (mask mode: their rows/columns of removed units masked too); trainable count."""
        self._lora, self._state.guard = _lora.start_lora(network, self.lora_settings, self._state.guard)
        _distributed.rebuild_wrapper(trainer)
        return self._lora.trainable_parameters()


def _prefix(target: str) -> str:
    return f"{target}." if target else ""


def _raise_if(problem: str | None) -> None:
    if problem is not None:
        raise ValueError(problem)


def _log_to_loggers(trainer: Trainer, metrics: dict[str, float]) -> None:
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)

