"""`TwoPhaseModule`: the pretrain and retrain recipes of a prune pipeline, shared by our LightningModules.

`configure_optimizers` builds a *fresh* optimizer and schedule over the module's current trainable parameters every
time it is called, because structured pruning replaces parameter objects: an optimizer built before pruning would
silently train nothing of the pruned layers. The phase travels in checkpoints, so a resumed retrain keeps its recipe.
"""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from typing_extensions import override

Phase = Literal["pretrain", "retrain"]


class TwoPhaseModule(LightningModule):
    """A LightningModule with a pretrain and a retrain optimizer/schedule recipe (call `_set_recipes` in `__init__`)."""

    phase: Phase = "pretrain"

    def _set_recipes(
        self,
        optimizer: OptimizerCallable,
        lr_scheduler: LRSchedulerCallable | None,
        retrain_optimizer: OptimizerCallable | None,
        retrain_lr_scheduler: LRSchedulerCallable | None,
    ) -> None:
        """Without a retrain optimizer the pretrain one is reused, with the retrain schedule if one is given."""
        self.phase = "pretrain"
        retrain = (
            (retrain_optimizer, retrain_lr_scheduler)
            if retrain_optimizer is not None
            else (optimizer, lr_scheduler if retrain_lr_scheduler is None else retrain_lr_scheduler)
        )
        self._recipes = {"pretrain": (optimizer, lr_scheduler), "retrain": retrain}

    def start_retrain(self) -> None:
        """Switch to the retrain recipe; the caller rebuilds optimizers (`trainer.strategy.setup_optimizers`)."""
        self.phase = "retrain"

    @override
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer_fn, scheduler_fn = self._recipes[self.phase]
        optimizer = optimizer_fn([p for p in self.parameters() if p.requires_grad])
        if scheduler_fn is None:
            return {"optimizer": optimizer}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler_fn(optimizer), "interval": "epoch"}}

    def _log_phase(self) -> None:
        # 0 = pretrain, 1 = retrain: dashboards split the two phases of one fit on this value.
        self.log("phase", float(self.phase == "retrain"), on_step=False, on_epoch=True)

    @override
    def on_fit_start(self) -> None:
        # transformers' from_pretrained hands the network over in eval mode and Lightning (>= 2.2) keeps each
        # module's mode: without this a pretrained model would train with its dropout off.
        self.train()

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint.setdefault("lightning_prune", {})["phase"] = self.phase

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Runs before the state dict is loaded: give the network its pruned shape first (also without a Trainer).
        record = checkpoint.get("lightning_prune", {})
        self.phase = record.get("phase", "pretrain")
        if "pruning" in record:
            from lightning_prune.pruning import restore_pruning

            restore_pruning(self, checkpoint)
