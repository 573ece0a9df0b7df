"""`Pruning`: one `fit` runs pretrain -> prune -> retrain; the maths lives in `lightning_prune.pruning`."""

from __future__ import annotations

import json
import math
import statistics
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from typing_extensions import override

from lightning_prune.callbacks import _distributed
from lightning_prune.pruning.budget import budget_problems, check_reachable, indices_for_budget
from lightning_prune.pruning.checkpoint import RECORD_VERSION, read_record, resolve_target
from lightning_prune.pruning.distributed import agreed, rank_batches
from lightning_prune.pruning.importance import CRITERIA, build_criterion, lowest_units
from lightning_prune.pruning.masks import MaskGuard
from lightning_prune.pruning.metrics import count_params_and_macs, evaluate_classifier
from lightning_prune.pruning.structure import PruningStructure, check_ratios

_HISTORY_KEYS = {"val_acc": ("val/acc",), "val_loss": ("val/loss",), "train_loss": ("train/loss_epoch", "train/loss")}


class Pruning(Callback):
    """Prune the network at the phase boundary, measure it, and switch the module to its retrain recipe.

    What the LightningModule must provide:
      - the network to prune as attribute `target` (default `model`; `""` = the module itself), called on a
        batch's inputs `x` where training batches are `(x, y)`;
      - optionally `loss_fn(outputs, y)` (default cross-entropy), used by the `taylor` and `oracle` criteria;
      - optionally `example_input_array` (a tensor); otherwise the first training batch's `x[:1]` traces the graph;
      - optionally `start_retrain()`, called at the boundary; then `configure_optimizers` is called again through
        `trainer.strategy.setup_optimizers(trainer)` and must build a fresh optimizer over `self.parameters()`;
      - for checkpoints: `restore_pruning(self, checkpoint)` in `on_load_checkpoint` (see
        `lightning_prune.pruning.restore_pruning`);
      - logged `val/acc`, `val/loss` and `train/loss` (epoch mean) for the retrain history and `final/*`.

    Pruning happens at the start of a training epoch (epoch `prune_at_epoch`, or 0 for `prune_at="start"`), after
    the previous epoch's LR-scheduler step, so the fresh retrain schedule starts at its epoch 0. Then:
    `prune/params_before|after`, `prune/macs_before|after` and (with `measure`) `pruned/train_loss|train_acc`
    (whole training set through the datamodule's `train_eval_dataloader()` if any, else the train loader; eval mode)
    and `pruned/test_loss|test_acc` (the datamodule's `test_dataloader()` if any, else the val loader) go to every
    logger; `prune/indices` as a JSON hyperparameter. During retraining `retrain/epoch` is logged each epoch, and at
    the end `final/test_acc|test_loss|train_loss` (best val accuracy epoch), `last/...` (last epoch) and the mean/std
    over the last 5 epochs (`last5/...`). Everything is also kept on the callback: `pruned_indices`,
    `pruned_metrics`, `retrain_history`, `final_metrics`.

    Args:
        criterion: `l1`, `taylor`, `oracle`, `random` or `explicit`.
        layers: `{glob pattern over module names: ratio in [0, 1)}`; `floor(ratio * units)` units are pruned.
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
    """

    def __init__(
        self,
        criterion: Literal["l1", "taylor", "oracle", "random", "explicit"] = "l1",
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
        budget: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        problems = _argument_problems(
            criterion, layers, indices, mode, prune_at, prune_at_epoch, global_pruning, calibration_batches,
            l1_reduction,
        )
        problems += budget_problems(budget)
        if budget is not None and criterion == "explicit":
            problems.append("`budget` must be None for criterion 'explicit' (the indices are given).")
        if problems:
            raise ValueError(" ".join(problems))
        self.budget = dict(budget) if budget else None
        self.criterion, self.mode, self.target, self.measure = criterion, mode, target, measure
        self.layers = dict(layers or {})
        self.indices = {name: list(idxs) for name, idxs in (indices or {}).items()}
        self.prune_epoch = 0 if prune_at == "start" else int(prune_at_epoch)
        self.global_pruning, self.calibration_batches, self.seed = global_pruning, calibration_batches, seed
        self.l1_reduction = l1_reduction
        self.pruned_indices: dict[str, list[int]] = {}
        self.pruned_metrics: dict[str, float] = {}
        self.retrain_history: list[dict[str, float]] = []
        self.final_metrics: dict[str, float] = {}
        self._pruned_at: int | None = None  # the epoch pruning happened at
        self._example: dict[str, Any] | None = None  # {"shape", "dtype"} of the tracing input
        self._history: dict[str, Any] = {"history": [], "heads": {}}
        self._guard: MaskGuard | None = None

    @property
    def pruned(self) -> bool:
        """Whether this run has pruned (also after resuming from a checkpoint taken after pruning)."""
        return self._pruned_at is not None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(criterion=self.criterion, layers=self.layers, mode=self.mode)

    # ----------------------------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or self.pruned:
            return
        network = resolve_target(pl_module, self.target)
        _distributed.check_strategy(trainer.strategy, self.mode)
        if build_criterion(self.criterion, **self._criterion_options()).needs_data:
            _distributed.check_train_data(self.criterion, _has_train_data(trainer))
        max_epochs = getattr(trainer, "max_epochs", None)
        if max_epochs is not None and max_epochs >= 0 and self.prune_epoch >= max_epochs:
            rank_zero_warn(f"Pruning: prune epoch {self.prune_epoch} >= max_epochs {max_epochs}; it will not prune.")
        if any(isinstance(cb, ModelCheckpoint) and cb.save_weights_only for cb in trainer.callbacks):
            rank_zero_warn("Pruning: `save_weights_only` checkpoints carry no pruning record and cannot be restored.")
        counts = self._plan(PruningStructure(network, self._example_input(trainer, pl_module)))
        if self.budget:
            check_reachable(network, self._example_input(trainer, pl_module), counts, self.budget)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.pruned and self.mode == "mask" and self._guard is None:  # resumed after pruning
            network = resolve_target(pl_module, self.target)
            structure = PruningStructure(network, self._example_input(trainer, pl_module).to(pl_module.device))
            self._guard = MaskGuard(network, structure.parameter_masks(self.pruned_indices))

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.pruned and trainer.current_epoch >= self.prune_epoch:
            self._prune(trainer, pl_module)
        if self.pruned:
            pl_module.log("retrain/epoch", float(trainer.current_epoch - self._pruned_at), on_epoch=True)

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        if self._guard is not None:
            self._guard.reapply()

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.pruned:
            return
        entry: dict[str, float] = {"epoch": trainer.current_epoch - self._pruned_at}
        for field, keys in _HISTORY_KEYS.items():
            value = next((trainer.callback_metrics[k] for k in keys if k in trainer.callback_metrics), math.nan)
            entry[field] = float(value)
        self.retrain_history.append(entry)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.final_metrics = summarize_history(self.retrain_history)
        if self.final_metrics:
            _log_to_loggers(trainer, self.final_metrics)

    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.pruned:
            checkpoint.setdefault("lightning_prune", {})["pruning"] = {
                "version": RECORD_VERSION, "target": self.target, "mode": self.mode, "criterion": self.criterion,
                "phase": "retrain", "indices": self.pruned_indices, "example_input": self._example, **self._history,
            }

    @override
    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        record = read_record(checkpoint)
        if record and record.get("phase") == "retrain" and callable(getattr(pl_module, "start_retrain", None)):
            pl_module.start_retrain()  # before the optimizers are built and their state is loaded

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "pruned_at": self._pruned_at, "pruned_indices": self.pruned_indices, "example": self._example,
            "history": self._history, "pruned_metrics": self.pruned_metrics,
            "retrain_history": self.retrain_history,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pruned_at = state_dict["pruned_at"]
        self.pruned_indices = state_dict["pruned_indices"]
        self._example = state_dict["example"]
        self._history = state_dict["history"]
        self.pruned_metrics = state_dict["pruned_metrics"]
        self.retrain_history = state_dict["retrain_history"]

    # ------------------------------------------------------------------------------------------- internals
    def _criterion_options(self) -> dict[str, Any]:
        options = {"l1": {"reduction": self.l1_reduction}, "random": {"seed": self.seed},
                   "explicit": {"indices": self.indices}}
        return options.get(self.criterion, {})

    def _plan(self, structure: PruningStructure) -> dict[str, int]:
        """`{layer: units to prune}` (validated: raises on bad patterns, ratios or indices)."""
        if self.criterion == "explicit":
            return {name: len(idxs) for name, idxs in structure.check_indices(self.indices).items()}
        counts = structure.pruned_counts(structure.select(self.layers))
        return {name: count for name, count in counts.items() if count > 0}

    def _example_input(self, trainer: Trainer, pl_module: LightningModule) -> torch.Tensor:
        if self._example is None:
            example = getattr(pl_module, "example_input_array", None)
            if not isinstance(example, torch.Tensor):
                example = _first_batch_inputs(trainer)
            self._example = {"shape": [1, *example.shape[1:]], "dtype": str(example.dtype).removeprefix("torch.")}
        return torch.zeros(self._example["shape"], dtype=getattr(torch, self._example["dtype"]))

    def _prune(self, trainer: Trainer, pl_module: LightningModule) -> None:
        network = resolve_target(pl_module, self.target)
        example = self._example_input(trainer, pl_module).to(pl_module.device)
        structure = PruningStructure(network, example)
        counts = self._plan(structure)
        criterion = build_criterion(self.criterion, **self._criterion_options())
        batches = []
        if criterion.needs_data:
            batches = _calibration_batches(trainer, self.calibration_batches, pl_module.device)
        loss_fn = getattr(pl_module, "loss_fn", None) or F.cross_entropy
        scores = criterion.scores(structure, list(counts), batches, loss_fn)
        budget_report: dict[str, float] = {}
        if self.budget:
            choice, budget_report = indices_for_budget(network, example, scores, counts, self.budget)
        else:
            choice = lowest_units(scores, counts, self.global_pruning)
        indices = agreed(choice, "Pruning's pruned indices")

        metrics: dict[str, float] = {}
        metrics["prune/params_before"], metrics["prune/macs_before"] = count_params_and_macs(network, example)
        if self.mode == "physical":
            self._history = structure.prune(indices)
            _distributed.rebuild_wrapper(trainer)  # DDP's buckets hold the replaced parameters
            measured = network
        else:
            inexact = [name for name in indices if not structure.mask_is_exact(name)]
            if inexact:
                rank_zero_warn(f"Pruning: masking {inexact} is not exactly removal (a LayerNorm/GroupNorm spans them).")
            measured = _pruned_copy(network, example, indices)
            self._guard = MaskGuard(network, structure.parameter_masks(indices))
        metrics["prune/params_after"], metrics["prune/macs_after"] = count_params_and_macs(measured, example)
        metrics.update(budget_report)
        self.pruned_indices, self._pruned_at = indices, trainer.current_epoch

        if callable(getattr(pl_module, "start_retrain", None)):
            pl_module.start_retrain()
        trainer.strategy.setup_optimizers(trainer)  # fresh optimizer + schedule over the current parameters

        if self.measure:
            metrics.update(self._measure(trainer, network, pl_module.device))
        self.pruned_metrics = metrics
        _log_to_loggers(trainer, metrics)
        for logger in trainer.loggers:
            logger.log_hyperparams({"prune/indices": json.dumps(indices)})
        _distributed.log_rank_indices(indices)
        rank_zero_info(
            f"Pruning ({self.criterion}, {self.mode}) at epoch {trainer.current_epoch}: "
            f"{metrics['prune/params_before']:,} -> {metrics['prune/params_after']:,} parameters; "
            + ", ".join(f"{name}: {len(idxs)}" for name, idxs in indices.items())
        )

    def _measure(self, trainer: Trainer, network: torch.nn.Module, device: torch.device) -> dict[str, float]:
        metrics = {}
        train_loader = _train_eval_loader(trainer) or _train_loader(trainer)
        metrics["pruned/train_loss"], metrics["pruned/train_acc"] = evaluate_classifier(network, train_loader, device)
        test_loader = _test_loader(trainer)
        if test_loader is None:
            rank_zero_warn("Pruning: no test or val dataloader; `pruned/test_*` are not measured.")
        else:
            metrics["pruned/test_loss"], metrics["pruned/test_acc"] = evaluate_classifier(network, test_loader, device)
        return metrics


def _argument_problems(
    criterion, layers, indices, mode, prune_at, prune_at_epoch, global_pruning, calibration_batches, l1_reduction
) -> list[str]:
    """Every problem with the constructor arguments, each naming the argument and the valid choices."""
    problems = []
    if criterion not in CRITERIA:
        problems.append(f"`criterion` must be one of {list(CRITERIA)}, got {criterion!r}.")
    if mode not in ("physical", "mask"):
        problems.append(f"`mode` must be one of ['physical', 'mask'], got {mode!r}.")
    if prune_at is not None and prune_at_epoch is not None:
        problems.append("Can't provide both `prune_at` and `prune_at_epoch`. Choose one.")
    elif prune_at is None and prune_at_epoch is None:
        problems.append("`prune_at: start` or `prune_at_epoch: N` must be given, got neither.")
    elif prune_at is not None and prune_at != "start":
        problems.append(f"`prune_at` must be 'start' or None, got {prune_at!r}.")
    elif prune_at_epoch is not None and (not isinstance(prune_at_epoch, int) or prune_at_epoch < 0):
        problems.append(f"`prune_at_epoch` must be an integer >= 0, got {prune_at_epoch!r}.")
    if criterion == "explicit":
        if not indices:
            problems.append("`indices` must give {layer: pruned indices} for criterion 'explicit', got none.")
        if layers:
            problems.append("`layers` must be empty for criterion 'explicit' (the layers are the keys of `indices`).")
        if global_pruning:
            problems.append("`global_pruning` must be false for criterion 'explicit'.")
    else:
        if indices:
            problems.append(f"`indices` must be None unless criterion is 'explicit', got criterion {criterion!r}.")
        if not layers:
            problems.append("`layers` must map at least one glob pattern to a ratio, e.g. {'conv1': 0.5}, got none.")
        else:
            try:
                check_ratios(layers)
            except ValueError as error:
                problems.append(str(error))
    if isinstance(calibration_batches, bool) or not isinstance(calibration_batches, int) or calibration_batches < 1:
        problems.append(f"`calibration_batches` must be an integer >= 1, got {calibration_batches!r}.")
    if l1_reduction not in ("sum", "mean"):
        problems.append(f"`l1_reduction` must be one of ['sum', 'mean'], got {l1_reduction!r}.")
    return problems


def summarize_history(history: list[dict[str, float]]) -> dict[str, float]:
    """`final/*` at the best val-accuracy epoch (earliest on ties), `last/*` and `last5/*` mean/std, from history."""
    if not history:
        return {}
    fields = {"test_acc": "val_acc", "test_loss": "val_loss", "train_loss": "train_loss"}
    scored = [entry for entry in history if not math.isnan(entry["val_acc"])]
    summary: dict[str, float] = {}
    if scored:
        best = max(scored, key=lambda entry: entry["val_acc"])  # max keeps the first maximum
        summary["final/epoch"] = best["epoch"]
        summary.update({f"final/{name}": best[key] for name, key in fields.items()})
    summary.update({f"last/{name}": history[-1][key] for name, key in fields.items()})
    tail = history[-5:]
    for name, key in fields.items():
        values = [entry[key] for entry in tail]
        summary[f"last5/{name}_mean"] = statistics.fmean(values)
        summary[f"last5/{name}_std"] = statistics.pstdev(values)
    return summary


def _log_to_loggers(trainer: Trainer, metrics: dict[str, float]) -> None:
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)


def _pruned_copy(network: torch.nn.Module, example: torch.Tensor, indices: dict[str, list[int]]) -> torch.nn.Module:
    """A physically pruned deep copy (to count what mask mode would save)."""
    import copy

    clone = copy.deepcopy(network)
    PruningStructure(clone, example).prune(indices)
    return clone


def _train_eval_loader(trainer: Trainer):
    datamodule = trainer.datamodule
    if datamodule is not None and callable(getattr(datamodule, "train_eval_dataloader", None)):
        return datamodule.train_eval_dataloader()
    return None


def _train_loader(trainer: Trainer):
    source = getattr(trainer.fit_loop, "_data_source", None)
    if source is not None and source.is_defined():
        return source.dataloader()
    return trainer.train_dataloader


def _has_train_data(trainer: Trainer) -> bool:
    source = getattr(trainer.fit_loop, "_data_source", None)
    return _train_eval_loader(trainer) is not None or (source is not None and source.is_defined())


def _test_loader(trainer: Trainer):
    datamodule = trainer.datamodule
    if datamodule is not None and is_overridden("test_dataloader", datamodule):
        return datamodule.test_dataloader()
    source = getattr(trainer.fit_loop.epoch_loop.val_loop, "_data_source", None)
    loaders = source.dataloader() if source is not None and source.is_defined() else trainer.val_dataloaders
    if isinstance(loaders, (list, tuple)):
        return loaders[0] if loaders else None
    return loaders


def _first_batch_inputs(trainer: Trainer) -> torch.Tensor:
    loader = _train_eval_loader(trainer) or _train_loader(trainer)
    if loader is None:
        raise ValueError("Pruning must trace the network on an input, got no `example_input_array` and no train data.")
    batch = next(iter(loader))
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _calibration_batches(trainer: Trainer, count: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` training batches (eval-transform loader if the datamodule has one), on `device`.

    In one process the first `count`; under DDP rank r takes batches r, r + world, ... so the ranks' union is the
    first `world * count` batches, which the criteria then reduce over.
    """
    loader = _train_eval_loader(trainer) or _train_loader(trainer)
    return [(batch[0].to(device), batch[1].to(device)) for batch in rank_batches(loader, count)]
