"""`CorrelationCallback` on a user's own LightningModule, alone and next to a pruning callback."""

import copy
import csv

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune.callbacks import CorrelationCallback
from lightning_prune.outcome import retrain_outcome


class BlobData(LightningDataModule):
    """Two Gaussian blobs per class in 8 dimensions; validation = the test split."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        centers = torch.randn(3, 8, generator=generator) * 2
        labels = torch.arange(96) % 3
        self.train = TensorDataset(centers[labels] + torch.randn(96, 8, generator=generator), labels)
        self.test = TensorDataset(centers[labels[:48]] + torch.randn(48, 8, generator=generator), labels[:48])

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(1))

    def train_eval_dataloader(self):
        return DataLoader(self.train, batch_size=64)

    def val_dataloader(self):
        return DataLoader(self.test, batch_size=64)


class PlainClassifier(LightningModule):
    """A module written without this project in mind: it only logs the usual epoch metrics."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True)  # logged as train/loss_epoch
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val/loss", F.cross_entropy(logits, y))
        self.log("val/acc", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _evaluate(network, loader):
    total, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            logits = network(x)
            total += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
            count += len(y)
    return total / count, correct / count


def _fit(tmp_path, callbacks, epochs=3):
    module, data = PlainClassifier(), BlobData()
    initial = copy.deepcopy(module.net)
    logger = CSVLogger(tmp_path, name="run")
    trainer = Trainer(
        max_epochs=epochs, accelerator="cpu", logger=logger, callbacks=callbacks, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0, log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    return initial, data, logger


def test_correlation_callback_alone_measures_pre_and_post(tmp_path):
    callback = CorrelationCallback()
    initial, data, logger = _fit(tmp_path, [callback])
    train_loss, train_acc = _evaluate(initial, data.train_eval_dataloader())
    test_loss, test_acc = _evaluate(initial, data.val_dataloader())
    assert callback.pre_metrics == pytest.approx(
        {"pre/train_loss": train_loss, "pre/train_acc": train_acc, "pre/val_loss": test_loss, "pre/val_acc": test_acc}
    )
    with open(logger.experiment.metrics_file_path, newline="") as file:
        rows = list(csv.DictReader(file))
    logged = [r for r in rows if r.get("val/acc")]
    assert [e["epoch"] for e in callback.history] == [0, 1, 2]
    assert [e["val_acc"] for e in callback.history] == pytest.approx([float(r["val/acc"]) for r in logged])
    assert [e["train_loss"] for e in callback.history] == pytest.approx(
        [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    )
    outcome = retrain_outcome(callback.history, split="val")
    assert callback.post_metrics["post/val_acc"] == outcome["final_val_acc"]
    assert callback.post_metrics["post/train_loss"] == outcome["final_train_loss"]
    assert any(r.get("pre/train_loss") for r in rows) and any(r.get("post/val_acc") for r in rows)


class FakePruning(Callback):
    """Stands in for any pruning callback: exposes `pruned_metrics` once it prunes at the start of epoch 1."""

    def __init__(self) -> None:
        self.pruned_metrics = {}

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            self.pruned_metrics = {"pruned/train_loss": 1.5, "pruned/train_acc": 0.25, "pruned/val_loss": 1.75,
                                   "pruned/val_acc": 0.5, "prune/params_after": 10}  # fmt: skip


@pytest.mark.parametrize("correlation_first", [True, False])
def test_correlation_callback_takes_pre_from_the_pruning_callback(tmp_path, correlation_first):
    callback, pruning = CorrelationCallback(), FakePruning()
    _fit(tmp_path, [callback, pruning] if correlation_first else [pruning, callback], epochs=4)
    assert callback.pre_metrics == {"pre/train_loss": 1.5, "pre/train_acc": 0.25, "pre/val_loss": 1.75,
                                    "pre/val_acc": 0.5}  # fmt: skip
    assert [e["epoch"] for e in callback.history] == [0, 1, 2]  # the retrain epochs: 1, 2 and 3 of the fit
    assert callback.post_metrics["post/val_acc"] == max(e["val_acc"] for e in callback.history)


def test_correlation_callback_state_round_trip():
    callback = CorrelationCallback()
    callback.pre_metrics = {"pre/train_loss": 1.0}
    callback.history = [{"epoch": 0, "val_acc": 0.5, "val_loss": 1.0, "train_loss": 1.2}]
    callback._retrain_start_epoch = 2
    restored = CorrelationCallback()
    restored.load_state_dict(copy.deepcopy(callback.state_dict()))
    assert restored.state_dict() == callback.state_dict()
    assert restored.history is not callback.history


def test_correlation_callback_rejects_empty_metric_names():
    with pytest.raises(ValueError, match="`acc_key` must be a non-empty metric name, got ''"):
        CorrelationCallback(acc_key="")


def test_correlation_callback_rejects_a_bad_split():
    with pytest.raises(ValueError, match=r"`split` must be one of \['val', 'test'\], got 'train'"):
        CorrelationCallback(split="train")


def test_correlation_callback_split_must_match_the_pruning_callback(tmp_path):
    from lightning_prune.callbacks import Pruning

    pruning = Pruning(layers={"net.0": 0.5}, prune_at_epoch=1, target="")
    with pytest.raises(ValueError, match="`split` must be the pruning callback's split 'val', got 'test'"):
        _fit(tmp_path, [pruning, CorrelationCallback(split="test")])
