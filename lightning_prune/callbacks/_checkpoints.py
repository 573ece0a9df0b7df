"""The checkpoint side of the `Pruning` callback: "best" restarts at pruning, and pruned checkpoints load anywhere.

Three pieces, each called from one of the callback's hooks (and `warn_weights_only`, in `setup`):

- `restart_best_tracking` (at the prune boundary): every `ModelCheckpoint` that monitors a metric forgets its
  best-k models and every `EarlyStopping` its best score and patience, because pre- and post-pruning scores rate
  different networks. Files already written stay on disk; `ckpt_path="best"` then names the best *pruned* model.
- `install_structure_restore` (in `setup`, any stage): whenever this Trainer loads a checkpoint that carries a
  pruning record, the module gets the recorded structure before the weights go in.

  Why wrap `trainer.strategy.load_model_state_dict`: Lightning 2.6 restores a checkpoint as: read the file
  (`resume_start`, which also sets `trainer.ckpt_path`) -> `LightningModule.on_load_checkpoint` ->
  `strategy.load_model_state_dict(checkpoint)` -> callbacks' `on_load_checkpoint` / `load_state_dict`. A
  callback's own hooks come after the weights, too late to change shapes. `load_model_state_dict` is a public,
  documented Strategy method that receives the loaded dict just before the weights load, on every path (`fit`
  resume, `validate` / `test` / `predict` with a path, `"best"`, `"last"`). Wrapping it on this Trainer's strategy
  *instance* (not the class, and not the user's module) touches nothing outside this Trainer, works for strategies
  that override the method, and leaves a module's own `on_load_checkpoint` (e.g. one calling `restore_pruning`)
  running first, as before; the replay is skipped when the shapes already fit.
- `plain_hyperparameters` (in `on_save_checkpoint`): saved hyperparameters that are not plain types (an nn.Module
  or a `functools.partial` optimizer, as in hydra-based projects that pass their network to `__init__` and call
  `save_hyperparameters()`) are left out of the file, so that it loads with `weights_only=True` (the default of
  torch >= 2.6, of `Trainer(ckpt_path=...)` and of `load_pruned`); `load_pruned(Cls, path, net=...)` takes them
  again.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_prune._files import write_atomic
from lightning_prune.pruning.checkpoint import mismatch_message, read_record, restore_pruning, shape_mismatch

_WRAPPED = "_lightning_prune_restores_structure"


def restart_best_tracking(trainer: Trainer) -> list[str]:
    """Forget every monitoring `ModelCheckpoint`'s best models and every `EarlyStopping`'s best score.

    Returns:
        A description of each callback reset, for the one log line.
    """
    # By hand, on their public attributes: Lightning offers no reset for either callback (their `load_state_dict`
    # restores a saved state, it does not forget one), and a fresh callback would lose the user's settings.
    reset = []
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor is not None:
            callback.best_k_models = {}
            callback.best_model_path = callback.kth_best_model_path = ""
            callback.best_model_score = None
            callback.kth_value = torch.tensor(torch.inf if callback.mode == "min" else -torch.inf)
            reset.append(f"ModelCheckpoint({callback.monitor})")
        elif isinstance(callback, EarlyStopping):
            callback.wait_count = 0
            callback.best_score = torch.tensor(torch.inf if callback.monitor_op == torch.lt else -torch.inf)
            reset.append(f"EarlyStopping({callback.monitor})")
    return reset


def install_structure_restore(trainer: Trainer, pruned_in_memory) -> None:
    """Make this Trainer give the module a checkpoint's pruned structure before it loads the checkpoint's weights.

    Args:
        trainer: The Trainer whose strategy loads checkpoints.
        pruned_in_memory: Callable returning whether the module in memory was pruned by this run (mask mode leaves
            shapes as they are, so a pre-pruning checkpoint would load silently over the masked weights).
    """
    strategy = trainer.strategy
    if getattr(strategy.load_model_state_dict, _WRAPPED, False):
        return
    original = strategy.load_model_state_dict

    @functools.wraps(original)
    def load_model_state_dict(checkpoint: Any, *args: Any, **kwargs: Any) -> Any:
        _prepare_module(trainer, checkpoint, pruned_in_memory())
        return original(checkpoint, *args, **kwargs)

    setattr(load_model_state_dict, _WRAPPED, True)
    strategy.load_model_state_dict = load_model_state_dict


def _prepare_module(trainer: Trainer, checkpoint: dict, pruned_in_memory: bool) -> None:
    module: LightningModule = trainer.lightning_module
    record = read_record(checkpoint)
    source = f"'{trainer.ckpt_path}'"
    if record is not None:
        restore_pruning(module, checkpoint)
    mismatch = shape_mismatch(module, checkpoint.get("state_dict", {}))
    if mismatch is not None:
        raise ValueError(mismatch_message(source, record, mismatch))
    if record is None and pruned_in_memory:
        rank_zero_warn(
            f"Pruning: checkpoint {source} was saved before pruning (it carries no pruning record) and the model in "
            "memory is pruned (mask mode); its unpruned weights are loaded. Pick a checkpoint saved after pruning "
            "to evaluate the pruned model."
        )


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_plain(item) for key, item in value.items())
    return False


def plain_hyperparameters(checkpoint: dict, already_said: bool) -> bool:
    """Drop hyperparameters that are not plain types from a checkpoint about to be saved; say so once.

    Returns:
        Whether the line has been said (pass it back as `already_said`).
    """
    saved = checkpoint.get(LightningModule.CHECKPOINT_HYPER_PARAMS_KEY)
    if not isinstance(saved, dict):
        return already_said
    objects = [key for key, value in saved.items() if not _is_plain(value)]
    if not objects:
        return already_said
    checkpoint[LightningModule.CHECKPOINT_HYPER_PARAMS_KEY] = {k: v for k, v in saved.items() if k not in objects}
    if not already_said:
        arguments = ", ".join(f"{key}=..." for key in objects)
        rank_zero_info(
            f"Pruning: the hyperparameters {objects} are objects, not plain types; checkpoints leave them out so that "
            f"they load with weights_only=True. Pass them again when loading: `load_pruned(Module, path, {arguments})`."
        )
    return True


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but whole or not at all: a temporary file in the same folder, then a rename.

    Lightning writes a checkpoint in place, so a full disk or a kill mid-write leaves a truncated file that every
    later resume trips on. Here the target keeps its previous content until the new one is complete, and a failed
    write names the target (not a temporary file). Remote paths (``s3://...``) go to Lightning's own writer.
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        write_atomic(Path(path), lambda file: torch.save(checkpoint, file))


def use_atomic_checkpoints(trainer: Trainer) -> None:
    """Give ``trainer`` the atomic writer unless it was given another `CheckpointIO` than Lightning's default."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()


def set_aside_unreadable(path: Path, phase: str) -> bool:
    """Move an unreadable checkpoint (truncated by a full disk or a kill in older runs) out of the way.

    Returns:
        True when ``path`` was moved aside (the caller then starts ``phase`` afresh), False when it reads.
    """
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # the index only: cheap for large files
        return False
    except Exception:  # noqa: BLE001  (whatever makes it unreadable: it is set aside, and said so)
        aside = path.with_name(f"{path.name}.unreadable")
        number = 1
        while aside.exists():
            number += 1
            aside = path.with_name(f"{path.name}.unreadable{number}")
        path.rename(aside)
        rank_zero_warn(f"{path} could not be read (truncated, e.g. by a full disk): moved to {aside.name}; {phase} "
                       "starts again from its first epoch.")
        return True


def plan_problem(recorded: dict[str, Any] | None, current: dict[str, Any], path: Any) -> str | None:
    """Why resuming a checkpoint made under the prune plan ``recorded`` with ``current`` would prune differently."""
    if not recorded or recorded == current:
        return None
    changed = sorted(key for key in set(recorded) | set(current) if recorded.get(key) != current.get(key))
    return (
        f"`Pruning` must resume with the plan its checkpoint was made with, got a different one in {changed}: "
        f"checkpoint {path} has {_plan_text(recorded, changed)}, the config has {_plan_text(current, changed)}. "
        "Restore those settings, or set `allow_plan_change: true` to prune by the new plan on top."
    )


def _plan_text(plan: dict[str, Any], keys: list[str]) -> str:
    return "{" + ", ".join(f"{key}: {plan.get(key)!r}" for key in keys) + "}"


def restart_best(trainer: Trainer) -> None:
    """`restart_best_tracking` with one log line naming what started afresh."""
    reset = restart_best_tracking(trainer)
    if reset:
        rank_zero_info(
            f"Pruning: {', '.join(reset)} start their best tracking afresh (pre-pruning scores rate another "
            "network; their files stay on disk); `restart_best=False` keeps them."
        )


def warn_weights_only(trainer: Trainer) -> None:
    """One warning when a `ModelCheckpoint` saves weights only: its files cannot carry the pruning record."""
    if any(isinstance(cb, ModelCheckpoint) and cb.save_weights_only for cb in trainer.callbacks):
        rank_zero_warn("Pruning: `save_weights_only` checkpoints carry no pruning record and cannot be restored.")
