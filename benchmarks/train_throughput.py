"""Training throughput of LeNet5-Mini on the full MNIST train set: the package's Trainer path vs a plain PyTorch loop.

Both paths train the same network with the same optimizer and batch size over the same in-memory tensors, in one run,
so the ratio compares only what the framework adds. The first epoch of each is a warm-up and is not timed.

    python benchmarks/train_throughput.py --root ../shared/data --epochs 3 --json throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from lightning_prune.data.mnist import MNISTDataModule
from lightning_prune.models import build_model
from lightning_prune.modules.classifier import ImageClassifier


def _sgd(params):
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)


class _EpochTimer(Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def lightning_images_per_second(datamodule: MNISTDataModule, num_images: int, epochs: int, quiet: bool) -> float:
    seed_everything(0)
    module = ImageClassifier("lenet5_mini", optimizer=_sgd)
    timer = _EpochTimer()
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=not quiet,
        enable_checkpointing=False,
        enable_progress_bar=not quiet,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
        default_root_dir="runs/benchmarks",
    )
    trainer.fit(module, datamodule=datamodule)
    return num_images * (epochs - 1) / sum(timer.seconds[1:])


def plain_images_per_second(x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int) -> float:
    torch.manual_seed(0)
    model = build_model("lenet5_mini")
    optimizer = _sgd(model.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        for idx in torch.randperm(len(x), generator=generator).split(batch_size):
            loss = loss_fn(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - start)
    return len(x) * (epochs - 1) / sum(seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data", help="folder holding MNIST/raw with the full IDX files")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per path; the first is a warm-up")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error(f"--epochs must be >= 2 (the first is a warm-up), got {args.epochs}")

    datamodule = MNISTDataModule(root=args.root, batch_size=args.batch_size, in_memory=True)
    datamodule.prepare_data()
    datamodule.setup("fit")
    x, y = datamodule.train_tensors()

    plain = plain_images_per_second(x, y, args.epochs, args.batch_size)
    lightning_quiet = lightning_images_per_second(datamodule, len(x), args.epochs, quiet=True)
    lightning_full = lightning_images_per_second(datamodule, len(x), args.epochs, quiet=False)
    figures = {
        "images": len(x),
        "batch_size": args.batch_size,
        "epochs_timed": args.epochs - 1,
        "plain_images_per_s": round(plain, 1),
        "lightning_images_per_s": round(lightning_quiet, 1),
        "lightning_with_loggers_and_bar_images_per_s": round(lightning_full, 1),
        "ratio": round(lightning_quiet / plain, 3),
        "ratio_with_loggers_and_bar": round(lightning_full / plain, 3),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "torch_threads": torch.get_num_threads(),
    }
    for key, value in figures.items():
        print(f"{key:>45}: {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
