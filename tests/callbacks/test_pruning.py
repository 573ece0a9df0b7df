"""The Pruning callback on a LightningModule a user wrote, and on ImageClassifier: one fit = pretrain/prune/retrain."""

import csv
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from _support.toys import UserModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune.callbacks import Pruning
from lightning_prune.pruning import evaluate_classifier


def _dataset(seed: int, size: int = 48) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(size, 1, 8, 8, generator=generator)
    return TensorDataset(inputs, torch.randint(0, 3, (size,), generator=generator))


class DataModule(L.LightningDataModule):
    """Train/val/test splits plus the eval-transform train loader the pruning boundary prefers."""

    def __init__(self) -> None:
        super().__init__()
        self.train, self.val, self.test = _dataset(0), _dataset(1, 32), _dataset(2, 24)

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=16, shuffle=True)

    def train_eval_dataloader(self):
        return DataLoader(self.train, batch_size=16)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=16)

    def test_dataloader(self):
        return DataLoader(self.test, batch_size=16)


def _trainer(tmp_path, callbacks, max_epochs, checkpoint=False) -> L.Trainer:
    return L.Trainer(
        max_epochs=max_epochs, callbacks=callbacks, logger=CSVLogger(tmp_path, name="logs"), accelerator="cpu",
        devices=1, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=checkpoint,
        num_sanity_val_steps=0, log_every_n_steps=1, default_root_dir=tmp_path,
    )


class Probe(L.Callback):
    """Placed after Pruning: what the optimizer and the model look like at the start of each epoch."""

    def __init__(self) -> None:
        self.epochs = []

    def on_train_epoch_start(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self.epochs.append({
            "lr": optimizer.param_groups[0]["lr"],
            "holds_current_params": held == {id(p) for p in pl_module.parameters()},
            "fresh_state": len(optimizer.state) == 0,
            "conv1_filters": pl_module.model.conv1.out_channels,
            "train_eval": evaluate_classifier(pl_module.model, trainer.datamodule.train_eval_dataloader()),
            "val": evaluate_classifier(pl_module.model, trainer.datamodule.val_dataloader()),
        })


class Snapshot(L.Callback):
    """Placed before Pruning: conv1's weights just before the boundary."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            self.conv1 = pl_module.model.conv1.weight.detach().clone()


def test_pruning_runs_pretrain_prune_retrain_on_a_plain_lightning_module(tmp_path):
    snapshot, probe = Snapshot(epoch=2), Probe()
    pruning = Pruning(criterion="l1", layers={"conv1": 0.5}, prune_at_epoch=2)
    module = UserModule()
    _trainer(tmp_path, [snapshot, pruning, probe], max_epochs=5).fit(module, datamodule=DataModule())

    expected = sorted(torch.argsort(snapshot.conv1.abs().sum(dim=(1, 2, 3)), stable=True)[:3].tolist())
    assert pruning.pruned_indices == {"conv1": expected}
    assert [e["conv1_filters"] for e in probe.epochs] == [6, 6, 3, 3, 3]
    assert all(e["holds_current_params"] for e in probe.epochs)
    assert probe.epochs[2]["fresh_state"]  # no momentum survives the boundary
    # the retrain schedule starts at its own epoch 0: 0.02, then StepLR halves it
    assert [e["lr"] for e in probe.epochs] == pytest.approx([0.1, 0.05, 0.02, 0.01, 0.005])
    assert module.phase == "retrain"

    metrics = pruning.pruned_metrics
    assert metrics["pruned/train_loss"] == pytest.approx(probe.epochs[2]["train_eval"][0], rel=1e-6)
    assert metrics["pruned/train_acc"] == pytest.approx(probe.epochs[2]["train_eval"][1])
    # the validation loader, the split val/* (and so final/*) comes from
    assert metrics["pruned/val_loss"] == pytest.approx(probe.epochs[2]["val"][0], rel=1e-6)
    assert metrics["pruned/val_acc"] == pytest.approx(probe.epochs[2]["val"][1])
    assert metrics["prune/params_after"] == sum(p.numel() for p in module.model.parameters())
    assert metrics["prune/params_after"] < metrics["prune/params_before"]
    assert metrics["prune/macs_after"] < metrics["prune/macs_before"]

    assert [entry["epoch"] for entry in pruning.retrain_history] == [0, 1, 2]
    best = max(pruning.retrain_history, key=lambda entry: entry["val_acc"])
    assert pruning.final_metrics["final/val_acc"] == best["val_acc"]
    assert pruning.final_metrics["last/val_loss"] == pruning.retrain_history[-1]["val_loss"]

    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    logged = {key for row in rows for key, value in row.items() if value}
    names = ["params_before", "params_after", "macs_before", "macs_after"]
    assert {f"prune/{n}" for n in names} <= logged
    assert {f"pruned/{n}" for n in ("train_loss", "train_acc", "val_loss", "val_acc")} <= logged
    assert {f"{p}/{n}" for p in ("final", "last") for n in ("val_acc", "val_loss", "train_loss")} <= logged
    assert not any("test" in name for name in logged)  # nothing measured on the validation loader is called test
    assert "retrain/epoch" in logged
    assert "prune/indices" in next(tmp_path.rglob("hparams.yaml")).read_text()


def test_pruning_at_start_in_mask_mode_keeps_the_group_at_zero(tmp_path):
    pruning = Pruning(criterion="oracle", layers={"conv1": 0.5}, mode="mask", prune_at="start", calibration_batches=2)
    module = UserModule()
    _trainer(tmp_path, [pruning], max_epochs=2).fit(module, datamodule=DataModule())
    pruned = pruning.pruned_indices["conv1"]
    assert len(pruned) == 3 and module.model.conv1.out_channels == 6
    net = module.model
    for tensor in (net.conv1.weight[pruned], net.conv1.bias[pruned], net.bn1.weight[pruned], net.bn1.bias[pruned],
                   net.conv2.weight[:, pruned]):
        assert (tensor == 0).all()
    assert pruning.pruned_metrics["prune/params_after"] == sum(p.numel() for p in net.parameters()) - (
        3 * 9 + 3 + 3 + 3 + 4 * 3 * 9)
    assert len(pruning.retrain_history) == 2


@pytest.mark.parametrize("mode", ["physical", "mask"])
def test_pruning_resumes_mid_retrain_and_loads_from_checkpoint(tmp_path, mode):
    def callback():
        return Pruning(criterion="explicit", indices={"conv1": [0, 2]}, mode=mode, prune_at_epoch=1)

    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    first = callback()
    _trainer(tmp_path, [first, saver], max_epochs=3, checkpoint=True).fit(UserModule(), datamodule=DataModule())
    mid_retrain = tmp_path / "ckpt" / "epoch=1-step=6.ckpt"  # pruned at the start of epoch 1, saved at its end

    resumed, module, probe = callback(), UserModule(), Probe()
    trainer = _trainer(tmp_path, [resumed, probe, ModelCheckpoint(dirpath=tmp_path / "again")], max_epochs=4,
                       checkpoint=True)
    trainer.fit(module, datamodule=DataModule(), ckpt_path=mid_retrain)
    assert resumed.pruned_indices == {"conv1": [0, 2]} and module.phase == "retrain"
    assert [entry["epoch"] for entry in resumed.retrain_history] == [0, 1, 2]
    assert probe.epochs[0]["holds_current_params"] and probe.epochs[0]["lr"] == pytest.approx(0.01)
    assert module.model.conv1.out_channels == (4 if mode == "physical" else 6)
    if mode == "mask":
        assert (module.model.conv1.weight[[0, 2]] == 0).all() and (module.model.conv2.weight[:, [0, 2]] == 0).all()

    loaded = UserModule.load_from_checkpoint(mid_retrain)
    saved = torch.load(mid_retrain, weights_only=True)["state_dict"]
    assert torch.equal(loaded.model.conv1.weight, saved["model.conv1.weight"])
    assert loaded.eval()(torch.randn(2, 1, 8, 8)).shape == (2, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"criterion": "magnitude"},
         r"`criterion` must be one of \['l1', 'taylor', 'oracle', 'random', 'explicit', 'bn_scale'\]"),
        ({"mode": "soft"}, r"`mode` must be one of \['physical', 'mask'\], got 'soft'"),
        ({"prune_at": "start"}, "Can't provide both `prune_at` and `prune_at_epoch`. Choose one."),
        ({"prune_at_epoch": None}, "`prune_at: start` or `prune_at_epoch: N` must be given, got neither"),
        ({"prune_at_epoch": None, "prune_at": "end"}, "`prune_at` must be 'start' or None, got 'end'"),
        ({"prune_at_epoch": -1}, "`prune_at_epoch` must be an integer >= 0, got -1"),
        ({"layers": None}, "`layers` must map at least one glob pattern to a ratio"),
        ({"layers": {"conv1": 1.0}}, r"`layers\['conv1'\]` must be a ratio in \[0, 1\), got 1.0"),
        ({"indices": {"conv1": [0]}}, "`indices` must be None unless criterion is 'explicit'"),
        ({"criterion": "explicit", "layers": None}, "`indices` must give {layer: pruned indices}"),
        ({"criterion": "explicit"}, "`layers` must be empty for criterion 'explicit'"),
        ({"criterion": "explicit", "layers": None, "indices": {"a": [0]}, "global_pruning": True},
         "`global_pruning` must be false for criterion 'explicit'"),
        ({"calibration_batches": 0}, "`calibration_batches` must be an integer >= 1, got 0"),
        ({"l1_reduction": "max"}, r"`l1_reduction` must be one of \['sum', 'mean'\], got 'max'"),
    ],
)
def test_pruning_rejects_bad_arguments_at_construction(kwargs, message):
    arguments = {"layers": {"conv1": 0.5}, "prune_at_epoch": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        Pruning(**arguments)


def test_pruning_reports_every_argument_problem_at_once():
    with pytest.raises(ValueError, match=r"`mode` must be .*`calibration_batches` must be"):
        Pruning(layers={"conv1": 0.5}, prune_at_epoch=1, mode="soft", calibration_batches=0)


def test_pruning_rejects_a_pattern_matching_nothing_before_training(tmp_path):
    trainer = _trainer(tmp_path, [Pruning(layers={"layer*.conv1": 0.5}, prune_at_epoch=1)], max_epochs=2)
    module = UserModule()
    with pytest.raises(ValueError, match="pattern 'layer\\*.conv1' must match a prunable layer.*conv1, conv2"):
        trainer.fit(module, datamodule=DataModule())
    assert trainer.global_step == 0


def _stub_trainer(module, world_size: int = 1, has_data: bool = True, strategy=None) -> SimpleNamespace:
    """What setup and on_train_start read of a Trainer: the public loaders, the module and the strategy."""
    from lightning.pytorch.strategies import SingleDeviceStrategy

    loader = DataLoader(_dataset(0), batch_size=4) if has_data else None
    strategy = strategy or SingleDeviceStrategy("cpu")
    strategy.load_model_state_dict = lambda checkpoint, strict=True: None
    return SimpleNamespace(world_size=world_size, callbacks=[], datamodule=None, lightning_module=module,
                           train_dataloader=loader, val_dataloaders=None, max_epochs=3, strategy=strategy)


def _setup_and_start(callback, trainer, module):
    callback.setup(trainer, module, "fit")
    callback.on_train_start(trainer, module)


def test_pruning_setup_checks_what_needs_the_trainer():
    module = UserModule()
    with pytest.raises(ValueError, match="criterion 'taylor' must have training data, got no train dataloader"):
        _setup_and_start(Pruning(criterion="taylor", layers={"conv1": 0.5}, prune_at="start"),
                         _stub_trainer(module, has_data=False), module)
    from lightning.pytorch.strategies import FSDPStrategy

    with pytest.raises(ValueError, match="`mode='physical'` must run under a strategy whose model wrapper can be "
                                         "rebuilt after pruning .*got FSDPStrategy; use `strategy: ddp`, or "
                                         "`mode='mask'`"):
        _setup_and_start(Pruning(layers={"conv1": 0.5}, prune_at="start"),
                         _stub_trainer(module, strategy=FSDPStrategy()), module)
    with pytest.raises(ValueError, match="`target` must name an nn.Module attribute of UserModule"):
        _setup_and_start(Pruning(layers={"conv1": 0.5}, prune_at="start", target="net"), _stub_trainer(module), module)
    with pytest.raises(ValueError, match="must trace the network on an input, got no `example_input_array`"):
        _setup_and_start(Pruning(layers={"conv1": 0.5}, prune_at="start"), _stub_trainer(module, has_data=False),
                         module)


def test_pruning_refuses_to_prune_at_or_after_max_epochs():
    module = UserModule()
    with pytest.raises(ValueError, match=r"`prune_at_epoch` must be below the Trainer's max_epochs \(3\), got 3: "
                                         "the fit would end before pruning"):
        _setup_and_start(Pruning(layers={"conv1": 0.5}, prune_at_epoch=3), _stub_trainer(module), module)


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ({"conv1": 0.1}, r"`layers` ratio for 'conv1' must prune at least one of its 6 units, got 0.1 "
                         r"\(floor\(0.1 \* 6\) = 0, so it would train unpruned\); use at least 0.1667"),
        ({"conv1": 0.0}, r"`layers` must prune at least one unit, got ratios that prune none: \{'conv1': 0.0\}"),
    ],
)
def test_pruning_refuses_ratios_that_prune_nothing_before_training(tmp_path, layers, message):
    trainer = _trainer(tmp_path, [Pruning(layers=layers, prune_at_epoch=1)], max_epochs=2)
    with pytest.raises(ValueError, match=message):
        trainer.fit(UserModule(), datamodule=DataModule())
    assert trainer.global_step == 0


def test_pruning_with_image_classifier_and_taylor(tmp_path):
    from lightning_prune.modules import ImageClassifier

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(64, 1, 32, 32, generator=generator)
    data = TensorDataset(images, torch.randint(0, 10, (64,), generator=generator))
    loader = DataLoader(data, batch_size=32)
    module = ImageClassifier(model="lenet5_mini")
    pruning = Pruning(criterion="taylor", layers={"conv1": 0.5, "conv2": 0.3}, prune_at_epoch=1, calibration_batches=2)
    trainer = _trainer(tmp_path, [pruning], max_epochs=2)
    trainer.fit(module, loader, loader)
    assert module.phase == "retrain" and module.model.conv1.out_channels == 5 and module.model.conv2.out_channels == 7
    held = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert held == {id(p) for p in module.parameters()}
    # no datamodule: the train loader and the val loader are measured
    assert pruning.pruned_metrics["pruned/val_loss"] == pytest.approx(pruning.pruned_metrics["pruned/train_loss"])
    assert pruning.final_metrics["last/val_acc"] == pruning.retrain_history[0]["val_acc"]


def test_pruning_reads_batches_without_shifting_the_training_shuffle():
    module = UserModule()
    trainer = _stub_trainer(module)
    trainer.train_dataloader = DataLoader(_dataset(0), batch_size=4, shuffle=True)  # draws from the global RNG
    pruning = Pruning(criterion="taylor", layers={"conv1": 0.5}, prune_at="start", calibration_batches=2)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    pruning._example_input(trainer, module)
    from lightning_prune.callbacks._loaders import calibration_batches

    assert len(calibration_batches(trainer, 2, torch.device("cpu"))) == 2
    assert torch.equal(torch.get_rng_state(), state)
    next(iter(trainer.train_dataloader))  # control: reading a shuffled loader does move the RNG
    assert not torch.equal(torch.get_rng_state(), state)


def test_pruning_budget_reaches_the_measured_macs_target_and_logs_it(tmp_path):
    from lightning_prune.pruning import count_params_and_macs

    module = UserModule()
    example = torch.zeros(1, 1, 8, 8)
    _, macs_before = count_params_and_macs(module.model, example)
    pruning = Pruning(layers={"conv1": 0.9, "conv2": 0.75}, budget={"macs": 0.5}, prune_at="start")
    trainer = _trainer(tmp_path, [pruning], max_epochs=1)
    trainer.fit(module, datamodule=DataModule())
    _, macs_after = count_params_and_macs(module.model, example)
    assert macs_after <= 0.5 * macs_before == 0.5 * pruning.pruned_metrics["budget/macs_before"]
    assert pruning.pruned_metrics["budget/macs_after"] == pruning.pruned_metrics["prune/macs_after"] == macs_after
    rows = list(csv.DictReader((tmp_path / "logs" / "version_0" / "metrics.csv").open()))
    assert any(row.get("budget/macs_reached") for row in rows)


def test_pruning_budget_is_refused_before_training_when_unreachable_or_malformed(tmp_path):
    module = UserModule()
    pruning = Pruning(layers={"conv1": 0.5}, budget={"macs": 0.1}, prune_at="start")
    trainer = _trainer(tmp_path, [pruning], max_epochs=1)
    with pytest.raises(ValueError, match=r"`budget` \{'macs': 0.1\} must be reachable by the selected layers: "
                                         r"pruning \['conv1'\] as far as allowed leaves 0\.\d+ of the macs"):
        trainer.fit(module, datamodule=DataModule())
    assert trainer.global_step == 0
    with pytest.raises(ValueError, match=r"`budget` must be one of \{'macs': f\} or \{'params': f\}"):
        Pruning(layers={"conv1": 0.5}, budget={"flops": 0.5}, prune_at="start")
    with pytest.raises(ValueError, match="`budget` must be None for criterion 'explicit'"):
        Pruning(criterion="explicit", indices={"conv1": [0]}, budget={"macs": 0.5}, prune_at="start")
