"""The Pruning callback dropped into a user's own Lightning project: "best" is the best pruned model, checkpoints
load with no hook in the module, the project's metric names, foreign modules as they are."""

import functools
import logging

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader
from user_project import DenseNet, UserDataModule, UserLitModule

import lightning_prune
from lightning_prune.callbacks import Pruning
from lightning_prune.pruning import evaluate_classifier

PRUNE_AT = 2


def _pruning(mode: str = "physical", **kwargs) -> Pruning:
    arguments = {"criterion": "l1", "layers": {"model.0": 0.5}, "mode": mode, "prune_at_epoch": PRUNE_AT,
                 "target": "net", "acc_key": "val_acc", "loss_key": "val_loss", "train_loss_key": "train_loss",
                 **kwargs}  # fmt: skip
    return Pruning(**arguments)


def _trainer(tmp_path, pruning, max_epochs: int = 4, **kwargs) -> tuple[L.Trainer, ModelCheckpoint]:
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_acc", mode="max", save_last=True,
                           filename="{epoch}-{val_acc:.3f}")  # fmt: skip
    callbacks = [pruning, best, EarlyStopping(monitor="val_acc", mode="max", patience=3)]
    trainer = L.Trainer(
        max_epochs=max_epochs, callbacks=callbacks, logger=False, accelerator="cpu", devices=1,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **kwargs,
    )  # fmt: skip
    return trainer, best


def _module(seed: int = 0, **kwargs) -> UserLitModule:
    torch.manual_seed(seed)
    return UserLitModule(DenseNet(), optimizer=functools.partial(torch.optim.Adam, lr=0.02), **kwargs)


def _epoch_of(path: str) -> int:
    return torch.load(path, weights_only=True)["epoch"]


HARSH = {"model.0": 0.875, "model.3": 0.875}  # 2 of 16 units left: the pruned model stays below the unpruned one


@pytest.mark.parametrize("mode", ["physical", "mask"])
def test_user_project_tests_the_best_pruned_checkpoint(tmp_path, mode):
    control, control_best = _trainer(tmp_path / "control", _pruning(mode, layers=HARSH, restart_best=False))
    control.fit(_module(), datamodule=UserDataModule())
    assert _epoch_of(control_best.best_model_path) < PRUNE_AT  # without the restart, "best" is the unpruned model

    pruning = _pruning(mode, layers=HARSH)
    trainer, best = _trainer(tmp_path, pruning)
    module, data = _module(), UserDataModule()
    trainer.fit(module, datamodule=data)
    assert _epoch_of(best.best_model_path) >= PRUNE_AT  # best tracking restarted at the boundary
    assert list((tmp_path / "ckpt").glob("epoch=1-*"))  # the pre-pruning best is still on disk
    result = trainer.test(ckpt_path="best", datamodule=data, verbose=False)[0]

    loaded = lightning_prune.load_pruned(UserLitModule, best.best_model_path, net=DenseNet())
    loss, acc = evaluate_classifier(loaded, data.test_dataloader())
    assert result["test_acc"] == pytest.approx(acc, abs=1e-6) and result["test_loss"] == pytest.approx(loss, rel=1e-5)
    pruned = pruning.pruned_indices["model.0"]
    if mode == "physical":
        assert loaded.net.model[0].out_features == 2 and module.net.model[0].out_features == 2
    else:
        assert loaded.net.model[0].out_features == 16 and (loaded.net.model[0].weight[pruned] == 0).all()
        assert (loaded.net.model[3].weight[:, pruned] == 0).all()
    assert set(pruning.final_metrics) >= {"final/val_acc", "final/val_loss", "final/train_loss", "last/val_acc"}
    best_entry = max(pruning.retrain_history, key=lambda entry: entry["val_acc"])
    assert pruning.final_metrics["final/val_acc"] == best_entry["val_acc"]
    assert "pruned/val_acc" in pruning.pruned_metrics and "pruned/test_acc" not in pruning.pruned_metrics


def test_user_project_says_which_checkpoint_is_which(tmp_path):
    trainer, _ = _trainer(tmp_path, _pruning())
    trainer.fit(_module(), datamodule=UserDataModule())
    old = sorted((tmp_path / "ckpt").glob("epoch=1-*"))[0]  # the last pre-pruning checkpoint
    with pytest.raises(ValueError, match=r"checkpoint '.*epoch=1-.*' was saved before pruning \(it carries no pruning "
                                         r"record\) and the model in memory is pruned \(net.model.0.weight: \[16, 16\] "
                                         r"in the file, \[8, 16\] in memory\)"):
        trainer.test(ckpt_path=str(old), datamodule=UserDataModule(), verbose=False)


def test_user_project_mask_mode_warns_on_a_pre_pruning_checkpoint(tmp_path):
    trainer, _ = _trainer(tmp_path, _pruning("mask"))
    trainer.fit(_module(), datamodule=UserDataModule())
    old = sorted((tmp_path / "ckpt").glob("epoch=1-*"))[0]
    with pytest.warns(UserWarning, match="was saved before pruning .* the model in memory is pruned \\(mask mode\\); "
                                         "its unpruned weights are loaded"):
        trainer.test(ckpt_path=str(old), datamodule=UserDataModule(), verbose=False)


@pytest.mark.parametrize("mode", ["physical", "mask"])
def test_user_project_resumes_from_last_ckpt_mid_retrain_and_validates_and_predicts_on_fresh_modules(tmp_path, mode):
    first, _ = _trainer(tmp_path, _pruning(mode), max_epochs=PRUNE_AT + 1)  # ends one epoch into retraining
    first.fit(_module(), datamodule=UserDataModule())
    last = tmp_path / "ckpt" / "last.ckpt"

    pruning, module = _pruning(mode), _module(seed=1)  # a fresh process: fresh module, fresh callback
    trainer, best = _trainer(tmp_path, pruning, max_epochs=PRUNE_AT + 3)
    trainer.fit(module, datamodule=UserDataModule(), ckpt_path=str(last))
    assert pruning.pruned and pruning.pruned_indices == first.callbacks[0].pruned_indices
    assert [entry["epoch"] for entry in pruning.retrain_history] == [0, 1, 2]  # epochs 2, 3, 4 of the fit
    assert module.net.model[0].out_features == (8 if mode == "physical" else 16)
    held = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert held == {id(p) for p in module.parameters()}
    if mode == "mask":
        assert (module.net.model[0].weight[pruning.pruned_indices["model.0"]] == 0).all()
    assert _epoch_of(best.best_model_path) >= PRUNE_AT

    # validate with a checkpoint path on a fresh, unpruned module through a Trainer holding the callback
    fresh_trainer, _ = _trainer(tmp_path / "again", _pruning(mode))
    result = fresh_trainer.validate(_module(seed=2), datamodule=UserDataModule(), ckpt_path=str(last), verbose=False)
    expected = evaluate_classifier(lightning_prune.load_pruned(UserLitModule, last, net=DenseNet()),
                                   UserDataModule().val_dataloader())  # fmt: skip
    assert result[0]["val_acc"] == pytest.approx(expected[1], abs=1e-6)
    inputs = torch.randn(8, 16)
    predicted = _trainer(tmp_path / "predict", _pruning(mode))[0].predict(
        _module(seed=3), DataLoader(inputs, batch_size=4), ckpt_path=str(last))  # fmt: skip
    loaded = lightning_prune.load_pruned(UserLitModule, last, net=DenseNet())
    torch.testing.assert_close(torch.cat(predicted), loaded(inputs))


def test_load_pruned_builds_a_fresh_module_from_a_checkpoint_without_hooks(tmp_path):
    trainer, _ = _trainer(tmp_path, _pruning(), max_epochs=PRUNE_AT + 1)
    module = _module()
    trainer.fit(module, datamodule=UserDataModule())
    last = tmp_path / "ckpt" / "last.ckpt"
    saved = torch.load(last, weights_only=True)  # plain types only: the network and optimizer were left out
    assert "net" not in saved["hyper_parameters"] and "optimizer" not in saved["hyper_parameters"]
    assert saved["hyper_parameters"]["compile"] is False

    loaded = lightning_prune.load_pruned(UserLitModule, last, net=DenseNet())
    assert not loaded.training and loaded.net.model[0].out_features == 8
    x = torch.randn(5, 16)
    torch.testing.assert_close(loaded(x), module.eval()(x))
    with pytest.raises(TypeError, match="net"):
        lightning_prune.load_pruned(UserLitModule, last)  # the network is a required argument of the module


def test_load_pruned_rejects_what_it_cannot_load(tmp_path):
    with pytest.raises(ValueError, match="`path` must be an existing checkpoint file, got '.*missing.ckpt'"):
        lightning_prune.load_pruned(UserLitModule, tmp_path / "missing.ckpt")
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"net": DenseNet()}}, pickled)
    with pytest.raises(ValueError, match="checkpoint '.*pickled.ckpt' must hold plain types only"):
        lightning_prune.load_pruned(UserLitModule, pickled)
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint '.*broken.ckpt' must be a readable torch checkpoint"):
        lightning_prune.load_pruned(UserLitModule, broken)
    plain = tmp_path / "plain.ckpt"
    torch.save({"epoch": 0}, plain)
    with pytest.raises(ValueError, match="checkpoint '.*plain.ckpt' must be a Lightning checkpoint with a"):
        lightning_prune.load_pruned(UserLitModule, plain)


def test_load_pruned_says_which_side_is_pruned(tmp_path):
    trainer, _ = _trainer(tmp_path, _pruning(), max_epochs=PRUNE_AT + 1)
    trainer.fit(_module(), datamodule=UserDataModule())
    small = DenseNet(hidden=12)  # a module whose shapes differ from both the record and the unpruned network
    with pytest.raises(ValueError, match=r"saved after pruning \(its record prunes 8 of model.0\) and the model in "
                                         r"memory has other shapes"):
        lightning_prune.load_pruned(UserLitModule, tmp_path / "ckpt" / "last.ckpt", net=small)


def test_user_project_metric_names_never_logged_get_one_warning_after_the_first_validation(tmp_path, recwarn):
    class WarningsAtEpochEnd(L.Callback):
        def __init__(self):
            self.counts = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.counts.append(sum("were not logged" in str(w.message) for w in recwarn))

    probe = WarningsAtEpochEnd()
    pruning = _pruning(acc_key="val/acc")  # the project logs val_acc
    trainer, _ = _trainer(tmp_path, pruning)
    trainer.callbacks.append(probe)
    trainer.fit(_module(), datamodule=UserDataModule())
    messages = [str(w.message) for w in recwarn if "were not logged" in str(w.message)]
    assert len(messages) == 1 and probe.counts[:2] == [0, 1]  # said once, at the end of the first epoch
    assert "['val/acc']" in messages[0] and "'val_acc'" in messages[0] and "`acc_key`" in messages[0]
    assert pruning.retrain_history == [] and pruning.final_metrics == {}


def test_user_project_without_train_eval_loader_measures_the_train_loader_and_says_so(tmp_path, caplog):
    class AtBoundary(L.Callback):  # after Pruning: the pruned network on the whole training split, in order
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                self.measured = evaluate_classifier(pl_module.net, DataLoader(trainer.datamodule.train, 128))

    pruning, probe = _pruning(prune_at_epoch=1), AtBoundary()
    trainer, _ = _trainer(tmp_path, pruning, max_epochs=2)
    trainer.callbacks.insert(1, probe)
    with caplog.at_level(logging.INFO):
        trainer.fit(_module(), datamodule=UserDataModule())
    assert "the data has no `train_eval_dataloader()`, so the training split is measured through the training " \
           "loader" in caplog.text
    # loss and accuracy over the whole training split do not depend on the shuffled order (eval mode)
    assert pruning.pruned_metrics["pruned/train_loss"] == pytest.approx(probe.measured[0], rel=1e-5)
    assert pruning.pruned_metrics["pruned/train_acc"] == pytest.approx(probe.measured[1])


def test_user_project_with_a_compiled_network(tmp_path):
    pruning = _pruning(prune_at_epoch=1)
    trainer, best = _trainer(tmp_path, pruning, max_epochs=2)
    module, data = _module(compile=True), UserDataModule()
    trainer.fit(module, datamodule=data)
    assert module.net._orig_mod.model[0].out_features == 8
    assert module.net(torch.randn(3, 16)).shape == (3, 4)  # the compiled wrapper traced the pruned network again
    result = trainer.test(ckpt_path="best", datamodule=data, verbose=False)[0]
    loaded = lightning_prune.load_pruned(UserLitModule, best.best_model_path, net=DenseNet(), compile=True)
    assert result["test_acc"] == pytest.approx(evaluate_classifier(loaded, data.test_dataloader())[1], abs=1e-6)


CALLBACKS_YAML = """
pruning:
  _target_: lightning_prune.callbacks.Pruning
  criterion: taylor
  layers: {model.0: 0.5}
  prune_at_epoch: 2
  calibration_batches: 2
  target: net
  acc_key: val_acc
  loss_key: val_loss
  train_loss_key: train_loss
model_checkpoint:
  _target_: lightning.pytorch.callbacks.ModelCheckpoint
  dirpath: {dirpath}
  monitor: val_acc
  mode: max
trainer:
  _target_: lightning.pytorch.Trainer
  max_epochs: 3
  accelerator: cpu
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
"""


def test_user_project_builds_the_callback_with_hydra_instantiate(tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = OmegaConf.create(CALLBACKS_YAML.replace("{dirpath}", str(tmp_path / "ckpt")))
    # as a hydra-template train.py does: every entry with a _target_ of the callbacks group, then the Trainer
    callbacks = [instantiate(entry) for name, entry in config.items() if name != "trainer"]
    trainer = instantiate(config.trainer, callbacks=callbacks, default_root_dir=str(tmp_path))
    pruning, best = callbacks
    assert isinstance(pruning, Pruning) and pruning.names.acc == "val_acc"
    data = UserDataModule()
    trainer.fit(_module(), datamodule=data)
    assert pruning.pruned_indices["model.0"] and len(pruning.pruned_indices["model.0"]) == 8
    assert _epoch_of(best.best_model_path) >= 2
    assert torch.load(best.best_model_path, weights_only=True)["lightning_prune"]["pruning"]["mode"] == "physical"
    result = trainer.test(ckpt_path="best", datamodule=data, verbose=False)[0]
    loaded = lightning_prune.load_pruned(UserLitModule, best.best_model_path, net=DenseNet())
    assert result["test_acc"] == pytest.approx(evaluate_classifier(loaded, data.test_dataloader())[1], abs=1e-6)


CLI_YAML = """
model:
  net: {class_path: user_project.DenseNet, init_args: {hidden: 16}}
trainer:
  max_epochs: 3
  accelerator: cpu
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: lightning_prune.callbacks.Pruning
      init_args: {layers: {model.0: 0.25}, mode: mask, prune_at_epoch: 1, target: net, acc_key: val_acc,
                  loss_key: val_loss, train_loss_key: train_loss}
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {monitor: val_acc, mode: max}
"""


def test_user_project_builds_the_callback_with_lightning_cli(tmp_path):
    from lightning.pytorch.cli import LightningCLI

    config = tmp_path / "config.yaml"
    config.write_text(CLI_YAML)
    cli = LightningCLI(UserLitModule, UserDataModule, run=False, save_config_kwargs={"overwrite": True},
                       args=["--config", str(config), f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    pruning = next(cb for cb in cli.trainer.callbacks if isinstance(cb, Pruning))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert pruning.mode == "mask" and len(pruning.pruned_indices["model.0"]) == 4
    assert _epoch_of(cli.trainer.checkpoint_callback.best_model_path) >= 1
    result = cli.trainer.test(ckpt_path="best", datamodule=cli.datamodule, verbose=False)[0]
    loaded = lightning_prune.load_pruned(UserLitModule, cli.trainer.checkpoint_callback.best_model_path, net=DenseNet())
    assert (loaded.net.model[0].weight[pruning.pruned_indices["model.0"]] == 0).all()
    assert result["test_acc"] == pytest.approx(evaluate_classifier(loaded, cli.datamodule.test_dataloader())[1],
                                               abs=1e-6)  # fmt: skip


def test_restart_best_tracking_forgets_best_scores_and_patience(tmp_path):
    from lightning_prune.callbacks._checkpoints import restart_best_tracking

    best = ModelCheckpoint(dirpath=tmp_path, monitor="val_acc", mode="max", save_top_k=2)
    best.best_k_models, best.best_model_path = {"a.ckpt": torch.tensor(0.9)}, "a.ckpt"
    best.kth_best_model_path, best.kth_value, best.best_model_score = "a.ckpt", torch.tensor(0.9), torch.tensor(0.9)
    stopping = EarlyStopping(monitor="val_loss", mode="min", patience=3)
    stopping.best_score, stopping.wait_count = torch.tensor(0.1), 2
    unmonitored = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = L.Trainer(callbacks=[best, stopping, unmonitored], logger=False, enable_progress_bar=False)
    assert sorted(restart_best_tracking(trainer)) == ["EarlyStopping(val_loss)", "ModelCheckpoint(val_acc)"]
    assert best.best_k_models == {} and best.best_model_path == best.kth_best_model_path == ""
    assert best.best_model_score is None and best.kth_value == -torch.inf
    assert stopping.best_score == torch.inf and stopping.wait_count == 0
