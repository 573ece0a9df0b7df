"""Lightning fits for the DDP tests: a network without BatchNorm, data whose global batches match at any world size.

Module-level classes, so that the ranks spawned by ddp_spawn can unpickle them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch
from _support.toys import UserModule
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_prune.callbacks import Pruning


class Module(UserModule):
    """The shared user module without BatchNorm, weight decay or LR steps, its metrics reduced over the ranks."""

    def __init__(self) -> None:
        super().__init__(pretrain_lr=0.2, retrain_lr=0.05, batch_norm=False, weight_decay=0.0, step_lr=False,
                         sync_dist=True)


class Data(L.LightningDataModule):
    """64 samples; rank r of W trains on samples r, r + W, ... in order: global batch k is samples 16k..16k+15."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        inputs = torch.randn(64, 1, 8, 8, generator=generator)
        targets = (inputs[:, 0, :4].mean((1, 2)) > 0).long() + (inputs[:, 0, 4:].mean((1, 2)) > 0).long()
        self.data, self.batch_size = TensorDataset(inputs, targets), batch_size

    def train_dataloader(self):
        # In order, so one process can read the same global batches (Lightning's own sampler would shuffle).
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(self.data, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
        return DataLoader(self.data, batch_size=self.batch_size, sampler=sampler)

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=16)

    def train_eval_dataloader(self):
        return DataLoader(self.data, batch_size=8)  # calibration: the same 8-sample batches at any world size


class Record(L.Callback):
    """Saves, on every rank, what the rank pruned and the network's final weights."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_end(self, trainer, pl_module):
        pruning = next(cb for cb in trainer.callbacks if type(cb).__name__ == "Pruning")
        state = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}
        torch.save(
            {
                "indices": pruning.pruned_indices,
                "state": state,
                "epoch": trainer.current_epoch,
                "optimizer_params": sum(p.numel() for g in trainer.optimizers[0].param_groups for p in g["params"]),
            },
            Path(self.out) / f"rank{trainer.global_rank}.pt",
        )


def fit(
    out: str,
    devices: int,
    pruning_kwargs: dict,
    max_epochs: int,
    ckpt_dir: str | None = None,
    ckpt_path: str | None = None,
    strategy: str = "ddp",
) -> None:
    """One fit on `devices` CPU processes (global batch 16 either way); every rank records into `out`."""
    callbacks = [Pruning(**pruning_kwargs), Record(out)]
    if ckpt_dir:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy if devices > 1 else "auto",
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(ckpt_dir),
        deterministic=True,
        use_distributed_sampler=False,
    )
    trainer.fit(Module(), datamodule=Data(batch_size=16 // devices), ckpt_path=ckpt_path)


def fit_in_subprocesses(fits: list[dict]) -> None:
    """Run `fit(**kwargs)` for each of `fits` in order, under strategy `ddp` on 2 CPU processes.

    The `ddp` launcher re-runs this script (not pytest) once per extra rank; later fits in the same script reuse
    the processes, so several fits cost one launch.
    """
    import lightning_prune

    root = str(Path(lightning_prune.__file__).resolve().parents[1])
    tests = str(Path(__file__).resolve().parents[1])  # for `_support`
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, tests, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, __file__, json.dumps(fits)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


if __name__ == "__main__":
    torch.set_num_threads(1)
    for kwargs in json.loads(sys.argv[1]):
        Path(kwargs["out"]).mkdir(parents=True, exist_ok=True)
        fit(devices=2, **kwargs)
