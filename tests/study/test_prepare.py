"""What a study prepares once: the pretrained weights (resumable, or from a checkpoint) and the masks."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from study_fakes import copy_study, tiny_study

from lightning_prune.study import prepare as prepare_module
from lightning_prune.study.prepare import ensure_masks, ensure_pretrained, plan_trials
from lightning_prune.study.run import cpu_threads, load_network_state, run_unit
from lightning_prune.study.spec import RecipeConfig
from lightning_prune.study.validation import validate


def test_pretraining_resumes_from_its_last_checkpoint(tiny_mnist_root, tmp_path):
    def pretrained(study_dir: Path, epochs: int) -> dict:
        config = tiny_study(tiny_mnist_root, study_dir, pretrain=RecipeConfig(epochs=epochs, lr_scheduler=None))
        with cpu_threads(1):
            return load_network_state(ensure_pretrained(config))

    interrupted = tmp_path / "interrupted"
    pretrained(interrupted, 1)
    assert (interrupted / "pretrain" / "last.ckpt").is_file()
    (interrupted / "pretrained.ckpt").unlink()  # as if killed after the first epoch's checkpoint
    resumed = pretrained(interrupted, 2)
    straight = pretrained(tmp_path / "straight", 2)
    assert resumed.keys() == straight.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name])


def test_pretrained_weights_from_a_lightning_checkpoint(finished, tmp_path):
    config, _ = finished
    checkpoint = Path(config.study_dir) / "pretrain" / "last.ckpt"
    from_checkpoint = dataclasses.replace(config, study_dir=tmp_path / "study", pretrain=None, checkpoint=checkpoint)
    state = load_network_state(ensure_pretrained(from_checkpoint))
    expected = load_network_state(Path(config.study_dir) / "pretrained.ckpt")
    for name in expected:
        torch.testing.assert_close(state[name], expected[name])
    wrong = dataclasses.replace(from_checkpoint, study_dir=tmp_path / "wrong", model="lenet5_mini_w20")
    message = r"`--checkpoint` must hold weights of the model 'lenet5_mini_w20', got .*last.ckpt', a checkpoint of "
    with pytest.raises(ValueError, match=message + r"'lenet5_mini'\. Use a checkpoint of this model"):
        validate(wrong)
    torch.save({"state_dict": load_network_state(checkpoint)}, tmp_path / "plain.ckpt")  # records no model
    plain = dataclasses.replace(wrong, checkpoint=tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match=r"plain.ckpt', which does not fit it \(size mismatch for conv1.weight"):
        validate(plain)


@pytest.mark.parametrize("kind", ["truncated", "malicious"])
def test_unreadable_or_unsafe_study_checkpoint_is_one_line(finished, tmp_path, kind):
    config, _ = finished
    bad = tmp_path / "bad.ckpt"
    if kind == "truncated":
        good = (Path(config.study_dir) / "pretrained.ckpt").read_bytes()
        bad.write_bytes(good[: len(good) // 3])
        message = r"`--checkpoint` must be a complete checkpoint written by torch.save, got .*bad.ckpt, which cannot"
    else:
        torch.save({"state_dict": _RunsCode()}, bad)
        message = r"`--checkpoint` must hold only tensors and plain Python values, got .*bad.ckpt, whose loading"
    study = dataclasses.replace(config, study_dir=tmp_path / "study", pretrain=None, checkpoint=bad)
    with pytest.raises(ValueError, match=message):
        validate(study)
    assert not (tmp_path / "study").exists() and not Path("pwned").exists()


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_masks_are_saved_once_and_criteria_marked(finished, tmp_path):
    config, _ = finished
    masks = ensure_masks(config)
    assert masks == json.loads((Path(config.study_dir) / "masks.json").read_text())["masks"]
    sampled = [m for m in masks if m["mask_id"] < 4]
    assert all(len(m["layer_masks"]["conv1"]) == 5 for m in masks) and len(sampled) == 4
    marked = {name for m in masks for name in m["criterion"].split(";") if name}
    assert marked == {"l1", "oracle"}
    # The l1 mark is the 5 filters of smallest L1 norm of the pretrained conv1.
    weight = load_network_state(Path(config.study_dir) / "pretrained.ckpt")["conv1.weight"]
    smallest = sorted(weight.abs().sum(dim=(1, 2, 3)).argsort()[:5].tolist())
    assert next(m for m in masks if "l1" in m["criterion"])["layer_masks"]["conv1"] == smallest
    trials = plan_trials(config, masks)
    assert [t.index for t in trials] == list(range(2 * len(masks)))
    assert {(t.mask_id, t.repeat, t.seed) for t in trials} == {(m["mask_id"], r, r) for m in masks for r in (0, 1)}


def test_batched_unit_writes_records_and_a_wandb_run_per_trial(finished, tmp_path):
    config, _ = finished
    copy = copy_study(config, tmp_path / "copy", wandb=True)
    trials = [t for t in plan_trials(copy, ensure_masks(copy)) if t.repeat == 0][:2]
    assert run_unit(copy, trials, batched=True) == [t.trial_id for t in trials]
    for trial in trials:
        record = json.loads((tmp_path / "copy" / "trials" / f"{trial.trial_id}.json").read_text())
        assert record["path"] == "batched" and record["layer_masks"] == trial.layer_masks
    assert len(list((tmp_path / "copy" / "wandb").glob("offline-run-*"))) == 2


def test_prepare_only_stops_before_the_trials(finished, tmp_path):
    from lightning_prune.study import run_study

    config, _ = finished
    copy = copy_study(config, tmp_path / "copy", prepare_only=True)
    assert run_study(copy) is None
    assert not list((tmp_path / "copy" / "trials").iterdir()) and not (tmp_path / "copy" / "results.csv").exists()


class _KilledAtEpoch(Callback):
    """Dies when training reaches ``epoch`` (as a killed process would, after the epochs before it finished)."""

    def __init__(self, epoch: int, started: list[int]) -> None:
        self.epoch, self.started = epoch, started

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.started.append(trainer.current_epoch)
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("killed")


def test_pretraining_killed_mid_way_resumes_from_the_last_finished_epoch(tiny_mnist_root, tmp_path, monkeypatch):
    recipe = RecipeConfig(epochs=3, lr_scheduler=None)
    started: list[int] = []
    real = prepare_module.Trainer

    def with_callback(callback):
        return lambda **kwargs: real(**{**kwargs, "callbacks": [*kwargs["callbacks"], callback]})

    def pretrained(study_dir: Path) -> dict:
        with cpu_threads(1):
            return load_network_state(ensure_pretrained(tiny_study(tiny_mnist_root, study_dir, pretrain=recipe)))

    monkeypatch.setattr(prepare_module, "Trainer", with_callback(_KilledAtEpoch(2, started)))
    with pytest.raises(RuntimeError, match="killed"):
        pretrained(tmp_path / "killed")
    assert started == [0, 1, 2] and not (tmp_path / "killed" / "pretrained.ckpt").exists()
    monkeypatch.setattr(prepare_module, "Trainer", with_callback(_KilledAtEpoch(-1, started)))
    resumed = pretrained(tmp_path / "killed")
    assert started == [0, 1, 2, 2]  # only the unfinished epoch ran again
    monkeypatch.undo()
    straight = pretrained(tmp_path / "straight")
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0)
