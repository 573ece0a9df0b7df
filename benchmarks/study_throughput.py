"""Throughput of the oracle-pruning study on LeNet5-Mini (embedded MNIST subset, no download).

Measures, on this machine:
  1. trials per hour retraining one mask at a time (one Lightning fit per trial: `Pruning` + `CorrelationCallback`)
     vs batched (`BatchedMaskedClassifier`: many masks in one fit);
  2. the framework's per-trial overhead against a plain PyTorch loop doing the same prune + evaluate + retrain on
     the same tensors (target <= 15%);
  3. what a W&B run per trial adds (offline).

    python benchmarks/study_throughput.py --json results/study_throughput.json [--epochs 3 --masks 64 --accelerator gpu]

Trials are timed alternately (framework, plain, W&B, framework, ...), so that the load of a shared machine hits
every side alike; wall and CPU seconds are recorded, and the overhead is given from the medians and from the
minima (the least disturbed runs: the usual estimator on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lightning_prune.data import MNISTMiniDataModule
from lightning_prune.models import build_model
from lightning_prune.pruning import PruningStructure, count_params_and_macs, evaluate_classifier
from lightning_prune.study.prepare import sample_masks
from lightning_prune.study.run import cpu_threads, quiet_lightning, run_batched_trials, run_single_trial
from lightning_prune.study.spec import MaskConfig, RecipeConfig, StudyConfig, Trial


def _config(args: argparse.Namespace, study_dir: Path, wandb: bool) -> StudyConfig:
    optimizer = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}}
    return StudyConfig(
        name="throughput",
        study_dir=study_dir,
        data={"class_path": "lightning_prune.data.MNISTMiniDataModule", "init_args": {"batch_size": args.batch_size}},
        pretrain=RecipeConfig(epochs=1),
        masks=MaskConfig(layers={"conv1": 0.5}),
        retrain=RecipeConfig(epochs=args.epochs, optimizer=optimizer, lr_scheduler=None),
        repeats=1,
        accelerator=args.accelerator,
        wandb=wandb,
        cpu_threads=args.threads,
    )


def plain_trial(state: dict, mask: dict, datamodule: MNISTMiniDataModule, epochs: int, device: torch.device) -> dict:
    """The same work as one study trial, in plain PyTorch: prune, measure, retrain, evaluate every epoch."""
    network = build_model("lenet5_mini")
    network.load_state_dict(state)
    example = torch.zeros(1, 1, 32, 32)
    count_params_and_macs(network, example)
    PruningStructure(network, example).prune(mask)
    params, macs = count_params_and_macs(network, example)
    network.to(device)
    pruned = {
        "train": evaluate_classifier(network, datamodule.train_eval_dataloader(), device),
        "test": evaluate_classifier(network, datamodule.val_dataloader(), device),
    }
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loader = datamodule.train_dataloader()
    history = []
    for _ in range(epochs):
        network.train()
        loss_sum, seen = torch.zeros((), device=device), 0
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(network(images), labels)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(labels)  # the epoch's train loss (the study records it)
            seen += len(labels)
        history.append((*evaluate_classifier(network, datamodule.val_dataloader(), device), float(loss_sum) / seen))
    return {"pruned": pruned, "history": history, "params": params, "macs": macs}


def _timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="Where to write the figures.")
    parser.add_argument("--epochs", type=int, default=3, help="Retrain epochs per trial.")
    parser.add_argument("--masks", type=int, default=8, help="Masks per batched fit.")
    parser.add_argument("--single-trials", type=int, default=6, help="Timed one-at-a-time trials (and plain ones).")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads.")
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    gpu = 0 if args.accelerator == "gpu" else None

    torch.manual_seed(0)
    state = build_model("lenet5_mini").state_dict()
    masks = sample_masks({"conv1": (10, 5)}, max(args.masks, args.single_trials + 1), seed=0)
    trials = [Trial(index=i, mask_id=i, repeat=0, seed=0, layer_masks=m) for i, m in enumerate(masks)]
    results: dict = {"machine": {"cpus": os.cpu_count(), "threads": args.threads, "accelerator": args.accelerator,
                                 "load_average": os.getloadavg()}, "settings": vars(args) | {"json": str(args.json)}}
    with tempfile.TemporaryDirectory() as folder, quiet_lightning(), cpu_threads(args.threads):
        config = _config(args, Path(folder), wandb=False)
        config_wandb = _config(args, Path(folder), wandb=True)
        datamodule = MNISTMiniDataModule(batch_size=args.batch_size)
        datamodule.setup("fit")
        # Warm-up: first fit, first plain trial, first W&B run (starts W&B's service).
        run_single_trial(config, trials[0], state, datamodule, gpu)
        plain_trial(state, masks[0], datamodule, args.epochs, device)
        run_single_trial(config_wandb, trials[0], state, datamodule, gpu)
        framework, plain, with_wandb = [], [], []
        for trial in trials[1 : args.single_trials + 1]:
            framework.append(_timed(lambda t=trial: run_single_trial(config, t, state, datamodule, gpu)))
            plain.append(_timed(lambda t=trial: plain_trial(state, t.layer_masks, datamodule, args.epochs, device)))
            with_wandb.append(_timed(lambda t=trial: run_single_trial(config_wandb, t, state, datamodule, gpu)))
        batch = trials[: args.masks]
        batched = _timed(lambda: run_batched_trials(config, batch, state, datamodule, gpu))

    def median(samples, index):
        return statistics.median(s[index] for s in samples)

    def minimum(samples, index):
        return min(s[index] for s in samples)

    single_wall, plain_wall, wandb_wall = median(framework, 0), median(plain, 0), median(with_wandb, 0)
    batched_per_trial = batched[0] / len(batch)
    results["one_at_a_time"] = {"seconds_per_trial": single_wall, "cpu_seconds_per_trial": median(framework, 1),
                                "trials_per_hour": 3600 / single_wall}
    results["batched"] = {"masks_per_fit": len(batch), "seconds_per_trial": batched_per_trial,
                          "cpu_seconds_per_trial": batched[1] / len(batch), "trials_per_hour": 3600 / batched_per_trial}
    results["batched_speedup"] = single_wall / batched_per_trial
    results["plain_pytorch"] = {"seconds_per_trial": plain_wall, "cpu_seconds_per_trial": median(plain, 1)}
    results["framework_overhead"] = {
        "wall_median": single_wall / plain_wall - 1,
        "cpu_median": median(framework, 1) / median(plain, 1) - 1,
        "cpu_min": minimum(framework, 1) / minimum(plain, 1) - 1,
        "target": 0.15,
    }
    results["wandb_run_seconds_per_trial"] = wandb_wall - single_wall
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
