"""Iterative pruning schedules of the Pruning callback: counts per step, mask = physical, recipes, resume, bad input."""

import csv
import math
from fractions import Fraction

import lightning as L
import pytest
import torch
from _support.toys import UserModule
from lightning.pytorch.callbacks import ModelCheckpoint
from test_pruning import DataModule, Probe, _setup_and_start, _stub_trainer, _trainer

import lightning_prune
from lightning_prune.callbacks import Pruning
from lightning_prune.pruning.schedule import ScheduleStep, cumulative_counts, schedule_steps


def test_schedule_steps_reach_the_ratios_in_equal_steps_by_the_formula():
    assert schedule_steps({"steps": 4, "every_n_epochs": 2}, first_epoch=1) == [
        ScheduleStep(1, 0.25), ScheduleStep(3, 0.5), ScheduleStep(5, 0.75), ScheduleStep(7, 1.0)]
    assert schedule_steps({"at": [[0, 0.3], [4, 1.0]]}, first_epoch=0) == [ScheduleStep(0, 0.3), ScheduleStep(4, 1.0)]
    assert schedule_steps(None, first_epoch=2) == [ScheduleStep(2, 1.0)]
    ratios, units = {"a": 0.5, "b": 0.75, "c": 0.3}, {"a": 6, "b": 10, "c": 64}
    n = 4
    for k in range(1, n + 1):
        # exact rational arithmetic: floor(ratio * k / n * units_original)
        expected = {name: math.floor(Fraction(str(r)) * k / n * units[name]) for name, r in ratios.items()}
        assert cumulative_counts(ratios, units, k / n) == expected


class StepProbe(L.Callback):
    """Placed after Pruning: the network and the callback's record at the start of each epoch, before training."""

    def __init__(self, pruning: Pruning) -> None:
        self.pruning, self.epochs = pruning, []

    def on_train_epoch_start(self, trainer, pl_module):
        net = pl_module.model
        torch.manual_seed(5)
        with torch.no_grad():
            out = net.eval()(torch.randn(8, 1, 8, 8))
        net.train()
        self.epochs.append({
            "indices": {k: list(v) for k, v in self.pruning.pruned_indices.items()}, "output": out,
            "channels": (net.conv1.out_channels, net.conv2.out_channels),
        })


def _fit(tmp_path, pruning, max_epochs, *extra, ckpt_path=None, checkpoint=False):
    L.seed_everything(0)
    module, probe = UserModule(), StepProbe(pruning)
    trainer = _trainer(tmp_path, [pruning, probe, *extra], max_epochs=max_epochs, checkpoint=checkpoint)
    trainer.fit(module, datamodule=DataModule(), ckpt_path=ckpt_path)
    return module, probe


def test_pruning_schedule_prunes_the_formula_counts_at_each_step_and_logs_each_step(tmp_path):
    pruning = Pruning(layers={"conv1": 0.5, "conv2": 0.5}, prune_at_epoch=1, schedule={"steps": 3, "every_n_epochs": 1})
    module, probe = _fit(tmp_path, pruning, max_epochs=5)
    # conv1: floor(0.5 * k/3 * 6) = 1, 2, 3; conv2: floor(0.5 * k/3 * 4) = 0, 1, 2
    assert [e["channels"] for e in probe.epochs] == [(6, 4), (5, 4), (4, 3), (3, 2), (3, 2)]
    assert [len(r["indices"].get("conv1", [])) for r in pruning.step_records] == [1, 1, 1]
    steps = [r["indices"]["conv1"] for r in pruning.step_records]
    assert sorted(i for s in steps for i in s) == pruning.pruned_indices["conv1"]  # disjoint, original numbering
    assert len(pruning.pruned_indices["conv1"]) == 3 and len(pruning.pruned_indices["conv2"]) == 2
    assert [entry["epoch"] for entry in pruning.retrain_history] == [0, 1]  # after the LAST step
    assert pruning.pruned_metrics["prune/step"] == 3.0
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    assert [float(r["prune/step"]) for r in rows if r.get("prune/step")] == [1.0, 2.0, 3.0]
    assert len([r for r in rows if r.get("pruned/val_acc")]) == 3
    assert pruning.final_metrics["last/val_loss"] == pruning.retrain_history[-1]["val_loss"]


def test_pruning_schedule_in_mask_mode_equals_physical_mode_after_each_step(tmp_path):
    runs = {}
    for mode in ("physical", "mask"):
        pruning = Pruning(layers={"conv1": 0.5, "conv2": 0.5}, prune_at_epoch=1, mode=mode,
                          schedule={"at": [[1, 0.4], [2, 0.7], [3, 1.0]]})
        runs[mode] = _fit(tmp_path / mode, pruning, max_epochs=4)[1].epochs
    for physical, mask in zip(runs["physical"], runs["mask"], strict=True):
        assert physical["indices"] == mask["indices"]  # masked units are never chosen again
        torch.testing.assert_close(physical["output"], mask["output"], atol=1e-4, rtol=1e-4)
    # conv1: floor(0.5 * f * 6) = 1, 2, 3; conv2: floor(0.5 * f * 4) = 0, 1, 2 for f = 0.4, 0.7, 1
    counts = [(len(e["indices"].get("conv1", [])), len(e["indices"].get("conv2", []))) for e in runs["mask"]]
    assert counts == [(0, 0), (1, 0), (2, 1), (3, 2)]
    assert [e["channels"] for e in runs["physical"]] == [(6, 4), (5, 4), (4, 3), (3, 2)]
    assert all(e["channels"] == (6, 4) for e in runs["mask"])


@pytest.mark.parametrize("mode", ["physical", "mask"])
def test_pruning_retrain_recipe_restart_or_continue_sets_the_optimizer_as_documented(tmp_path, mode):
    seen = {}
    for recipe in ("restart", "continue"):
        pruning = Pruning(layers={"conv1": 0.5}, prune_at_epoch=1, mode=mode, retrain_recipe=recipe,
                          schedule={"steps": 2, "every_n_epochs": 2})
        probe = Probe()
        L.seed_everything(0)
        _trainer(tmp_path / recipe, [pruning, probe], max_epochs=4).fit(UserModule(), datamodule=DataModule())
        seen[recipe] = probe.epochs
        assert all(e["holds_current_params"] for e in probe.epochs)
    # pretrain lr 0.1; retrain 0.02 halved each epoch by StepLR; the second step is at epoch 3
    assert [e["lr"] for e in seen["restart"]] == pytest.approx([0.1, 0.02, 0.01, 0.02])
    assert [e["lr"] for e in seen["continue"]] == pytest.approx([0.1, 0.02, 0.01, 0.005])
    assert seen["restart"][3]["fresh_state"]
    # continue: mask mode keeps the optimizer's momentum; physical mode must rebuild it over the smaller parameters
    assert seen["continue"][3]["fresh_state"] == (mode == "physical")


@pytest.mark.parametrize("mode", ["physical", "mask"])
def test_pruning_schedule_resumed_between_steps_ends_like_an_uninterrupted_run(tmp_path, mode):
    def callback():
        return Pruning(criterion="random", seed=3, layers={"conv1": 0.5, "conv2": 0.5}, prune_at_epoch=1, mode=mode,
                       schedule={"steps": 3, "every_n_epochs": 1})

    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    whole = callback()
    full_module, _ = _fit(tmp_path / "whole", whole, 5, saver, checkpoint=True)
    between = tmp_path / "ckpt" / "epoch=1-step=6.ckpt"  # after step 1 (epoch 1), before step 2 (epoch 2)
    record = torch.load(between, weights_only=True)["lightning_prune"]["pruning"]
    assert record["version"] == 2 and len(record["steps"]) == 1

    loaded = lightning_prune.load_pruned(UserModule, between)
    assert loaded.model.conv1.out_channels == (5 if mode == "physical" else 6)

    resumed = callback()
    module, _ = _fit(tmp_path / "resumed", resumed, 5, ModelCheckpoint(dirpath=tmp_path / "again"),
                     ckpt_path=between, checkpoint=True)
    assert resumed.steps_done == 3
    assert resumed.pruned_indices == whole.pruned_indices
    assert [r["indices"] for r in resumed.step_records] == [r["indices"] for r in whole.step_records]
    assert {k: v.shape for k, v in module.state_dict().items()} == {
        k: v.shape for k, v in full_module.state_dict().items()}
    if mode == "mask":
        assert (module.model.conv1.weight[whole.pruned_indices["conv1"]] == 0).all()
    final = lightning_prune.load_pruned(UserModule, tmp_path / "ckpt" / "epoch=4-step=15.ckpt")
    assert final.model.conv1.out_channels == (3 if mode == "physical" else 6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"schedule": {"steps": 2, "every_n_epochs": 1, "at": [[1, 1.0]]}},
         r"`schedule` must use one form, \{steps, every_n_epochs\} or \{at\}, got both"),
        ({"schedule": {"steps": 0, "every_n_epochs": 1}}, r"`schedule.steps` must be an integer >= 1, got 0"),
        ({"schedule": {"steps": 2, "every_n_epochs": 0}}, r"`schedule.every_n_epochs` must be an integer >= 1, got 0"),
        ({"schedule": {"at": [[1, 0.5], [2, 0.5]]}}, r"`schedule.at` fractions must increase within \(0, 1\], got "
                                                     r"\[0.5, 0.5\]"),
        ({"schedule": {"at": [[1, 0.5], [2, 1.5]]}}, r"fractions must increase within \(0, 1\], got \[0.5, 1.5\]"),
        ({"schedule": {"at": [[1, 0.0], [2, 1.0]]}}, r"fractions must increase within \(0, 1\], got \[0.0, 1.0\]"),
        ({"schedule": {"at": [[1, 0.5], [1, 1.0]]}}, r"`schedule.at` epochs must be increasing integers >= 0"),
        ({"schedule": {"at": [[2, 0.5], [3, 1.0]]}}, r"`schedule.at` must start at the prune epoch \(1, .*got first "
                                                     r"epoch 2"),
        ({"schedule": {"every": 2}}, r"`schedule` keys must be among \['steps', 'every_n_epochs', 'at'\], got "
                                     r"\['every'\]"),
        ({"schedule": {"steps": 2, "every_n_epochs": 1}, "criterion": "explicit", "layers": None,
          "indices": {"conv1": [0]}}, "`schedule` must be None for criterion 'explicit'"),
        ({"schedule": {"steps": 2, "every_n_epochs": 1}, "budget": {"macs": 0.5}},
         "`schedule` must be None when `budget` is given"),
        ({"retrain_recipe": "resume"}, r"`retrain_recipe` must be one of \['restart', 'continue'\], got 'resume'"),
    ],
)
def test_pruning_schedule_rejects_bad_arguments_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Pruning(**{"layers": {"conv1": 0.5}, "prune_at_epoch": 1, **kwargs})


def test_pruning_schedule_refuses_steps_past_max_epochs():
    module = UserModule()
    pruning = Pruning(layers={"conv1": 0.5}, prune_at_epoch=1, schedule={"steps": 2, "every_n_epochs": 2})
    with pytest.raises(ValueError, match=r"`schedule` steps must all start below the Trainer's max_epochs \(3\), "
                                         r"got steps at epochs \[1, 3\]"):
        _setup_and_start(pruning, _stub_trainer(module), module)


def test_pruning_schedule_refuses_transformer_decoder_units():
    from transformers import LlamaConfig, LlamaForCausalLM

    from lightning_prune.pruning.build import build_structure
    from lightning_prune.pruning.schedule import check_structure

    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    structure = build_structure(LlamaForCausalLM(config), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`schedule` must be None \(one step\) for transformer decoder units .*"
                                         r"got 2 steps"):
        check_structure(structure, 2, {"model.layers.*.mlp": 0.5}, "mask")
    check_structure(structure, 1, {"model.layers.*.mlp": 0.5}, "mask")  # one step is today's pruning


def test_pruning_schedule_refuses_physical_head_pruning_and_accepts_it_masked():
    from torchvision.models import VisionTransformer

    from lightning_prune.pruning.build import build_structure
    from lightning_prune.pruning.schedule import check_structure

    vit = VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=4, hidden_dim=16, mlp_dim=16)
    structure = build_structure(vit, torch.zeros(1, 3, 32, 32))
    heads = {"encoder.layers.encoder_layer_0.self_attention": 0.5}
    with pytest.raises(ValueError, match=r"`schedule` must be None \(one step\) for attention heads in physical "
                                         r"mode, got 3 steps .*use `mode: mask`"):
        check_structure(structure, 3, heads, "physical")
    check_structure(structure, 3, heads, "mask")


def test_pruning_schedule_step_that_prunes_nothing_is_refused_before_training(tmp_path):
    # conv2 has 4 units: floor(0.5 * 0.2 * 4) = 0 at the first step, floor(0.5 * 4) = 2 at the second
    pruning = Pruning(criterion="taylor", layers={"conv2": 0.5}, prune_at_epoch=1, calibration_batches=1,
                      schedule={"at": [[1, 0.2], [2, 1.0]]})
    with pytest.raises(ValueError, match=r"`schedule` step 1 \(epoch 1, fraction 0.2\) must prune at least one "
                                         r"unit, got 0 \(floor\(ratio x fraction x units\) is 0 in all"):
        _fit(tmp_path, pruning, max_epochs=3)
    assert pruning.steps_done == 0 and not pruning.step_records
