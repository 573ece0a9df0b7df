"""Bad inputs as a careless or hostile user gives them: each is one clear line and a non-zero exit, before compute.

One table, run in this process through the real entry point (`lightning_prune.cli.main`). Rows that could run code
carry a command that would create a marker file: the test also checks that the file was never created.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lightning_prune.cli import main
from lightning_prune.data.video_qa import read_annotations
from lightning_prune.models import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QUICKSTART = str(CONFIGS / "quickstart.yaml")
STUDY = str(CONFIGS / "study" / "quickstart.yaml")
LLAMA = CONFIGS / "pruning" / "tiny_llama_l1.yaml"


def _system(marker: str) -> str:
    return f'{{class_path: os.system, init_args: {{command: "touch {marker}"}}}}'


def _popen(marker: str) -> str:
    return f"{{class_path: subprocess.Popen, init_args: {{args: [touch, {marker}]}}}}"


def _llama_with_evil_config(tmp: Path, marker: str) -> str:
    config = yaml.safe_load(LLAMA.read_text())
    config["model"]["init_args"]["config"]["evil"] = yaml.safe_load(_system(marker))
    path = tmp / "llama.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _included_model_file(tmp: Path, marker: str) -> str:
    """main.yaml says `model: model.yaml`; model.yaml hides a class spec in a list inside model_kwargs."""
    config = yaml.safe_load(Path(QUICKSTART).read_text())
    model = config.pop("model")
    model["init_args"]["model_kwargs"] = {"extra": {"layers": [1, yaml.safe_load(_popen(marker))]}}
    (tmp / "parts").mkdir()
    (tmp / "parts" / "model.yaml").write_text(yaml.safe_dump(model))
    config["model"] = "model.yaml"  # relative to the including file, as jsonargparse reads it
    (tmp / "parts" / "main.yaml").write_text(yaml.safe_dump(config))
    return str(tmp / "parts" / "main.yaml")


def _study_yaml(tmp: Path, marker: str) -> str:
    path = tmp / "extra.yaml"
    path.write_text(f"pretrain:\n  trainer:\n    foo: {_system(marker)}\n")
    return str(path)


# (id, argv builder(tmp, marker) -> argv, fragment expected in the one-line error)
NO_CODE = [
    ("fit-schedule-steps",
     lambda t, m: ["fit", "--config", QUICKSTART, "--trainer.callbacks.init_args.schedule",
                   f"{{steps: {_system(m)}, every_n_epochs: 1}}"],
     "`--trainer.callbacks.init_args.schedule.steps` must hold data only, got `class_path: os.system`"),
    ("fit-model-kwargs",
     lambda t, m: ["fit", "--config", QUICKSTART, "--model.init_args.model_kwargs", f"{{x: {_system(m)}}}"],
     "`--model.init_args.model_kwargs.x` must hold data only"),
    ("fit-list-in-dict",
     lambda t, m: ["fit", "--config", QUICKSTART, "--model.init_args.model_kwargs", f"{{x: {{y: [1, {_popen(m)}]}}}}"],
     "`--model.init_args.model_kwargs.x.y[1]` must hold data only, got `class_path: subprocess.Popen`"),
    ("fit-yaml-in-a-string",
     lambda t, m: ["fit", "--config", QUICKSTART, "--model.init_args.model_kwargs", f"{{x: '{_system(m)}'}}"],
     "`--model.init_args.model_kwargs.x` must hold data only"),
    ("fit-causal-lm-config",
     lambda t, m: ["fit", "--config", _llama_with_evil_config(t, m)],
     "`model.init_args.config.evil` must hold data only"),
    ("fit-included-config-file",
     lambda t, m: ["fit", "--config", _included_model_file(t, m)],
     "`model.init_args.model_kwargs.extra.layers[1]` must hold data only"),
    ("fit-slot-not-a-subclass",
     lambda t, m: ["fit", "--config", QUICKSTART, "--model", _system(m)],
     "`--model.class_path` must name a subclass of LightningModule, got 'os.system'"),
    ("fit-dotted-class-path",
     lambda t, m: ["fit", "--config", QUICKSTART, "--data.class_path", "os.system"],
     "`--data.class_path` must name a subclass of LightningDataModule, got 'os.system'"),
    ("fit-optimizer-slot",
     lambda t, m: ["fit", "--config", QUICKSTART, "--model.init_args.optimizer", _popen(m)],
     "`--model.init_args.optimizer.class_path` must name a subclass of Optimizer, got 'subprocess.Popen'"),
    ("fit-callback-slot",
     lambda t, m: ["fit", "--config", QUICKSTART, "--trainer.callbacks", f"[{_system(m)}]"],
     "`--trainer.callbacks[0].class_path` must name a subclass of Callback, got 'os.system'"),
    ("study-retrain-trainer-callbacks",
     lambda t, m: ["study", "--config", STUDY, "--retrain.trainer", f"{{callbacks: [{_system(m)}]}}"],
     "`--retrain.trainer.callbacks[0]` must hold data only"),
    ("study-model-kwargs",
     lambda t, m: ["study", "--config", STUDY, "--model_kwargs", f"{{x: {_system(m)}}}"],
     "`--model_kwargs.x` must hold data only"),
    ("study-yaml-pretrain-trainer",
     lambda t, m: ["study", "--config", STUDY, "--config", _study_yaml(t, m)],
     "`pretrain.trainer.foo` must hold data only"),
    ("study-data-init-args",
     lambda t, m: ["study", "--config", STUDY, "--data.init_args.root", _popen(m)],
     "`--data.init_args.root` must hold data only"),
    ("study-data-slot",
     lambda t, m: ["study", "--config", STUDY, "--data", _system(m)],
     "`--data.class_path` must name a subclass of LightningDataModule, got 'os.system'"),
]


# (id, argv, the whole one-line message): choices and types named at their place, before any compute.
WRONG_VALUES = [
    ("criterion-choice", ["--trainer.callbacks.init_args.criterion", "l3"],
     "`--trainer.callbacks.init_args.criterion` must be one of [l1, taylor, oracle, random, explicit, bn_scale], "
     "got 'l3'."),
    ("mode-choice", ["--trainer.callbacks.init_args.mode", "hard"],
     "`--trainer.callbacks.init_args.mode` must be one of [physical, mask], got 'hard'."),
    ("batch-size-type", ["--data.init_args.batch_size", "abc"],
     "`--data.init_args.batch_size` must be an integer, got 'abc' (a string)."),
    ("lr-type", ["--model.init_args.optimizer.init_args.lr", "fast"],
     "`--model.init_args.optimizer.init_args.lr` must be a number, got 'fast' (a string)."),
    ("prune-epoch-type", ["--trainer.callbacks.init_args.prune_at_epoch", "ten"],
     "`--trainer.callbacks.init_args.prune_at_epoch` must be an integer or null, got 'ten' (a string)."),
    ("layers-list", ["--trainer.callbacks.init_args.layers", "[conv1]"],
     "`--trainer.callbacks.init_args.layers` must be a mapping or null, got ['conv1'] (a list)."),
    ("layers-ratio-type", ["--trainer.callbacks.init_args.layers", "{conv1: half}"],
     "`--trainer.callbacks.init_args.layers.conv1` must be a number, got 'half' (a string)."),
    ("optimizer-typo", ["--model.init_args.optimizer.init_args.lrr", "0.1"],
     "`--model.init_args.optimizer.init_args` must hold arguments of torch.optim.sgd.SGD (params, lr, momentum, "
     "dampening, weight_decay, nesterov, maximize, foreach, differentiable, fused), got unknown 'lrr'."),
]


DYCOKE_TINY = str(CONFIGS / "dycoke" / "tiny.yaml")
PREDICT_VALUES = [
    ("dycoke-variant", ["--trainer.callbacks+=lightning_prune.callbacks.DyCoke",
                        "--trainer.callbacks.init_args.variant", "fancy"],
     "`--trainer.callbacks.init_args.variant` must be one of [official, refined], got 'fancy'."),
    ("flash-attention", ["--model.init_args.attn_implementation", "flash_attention_2"],
     "`--model.init_args.attn_implementation` must be one of [sdpa, eager], got 'flash_attention_2'."),
    ("augmentation-keep", ["--model.init_args.augmentation.visual_keep_min", "2"],
     "LayoutAugmentation: `visual_keep_min` must be in (0, 1], got 2.0."),
]


def _yaml_row(tmp: Path, old: str, new: str) -> list[str]:
    path = tmp / "edited.yaml"
    path.write_text(Path(QUICKSTART).read_text().replace(old, new))
    return ["fit", "--config", str(path)]


YAML_VALUES = [
    ("yaml-criterion", ("criterion: l1", "criterion: l3"),
     "`trainer.callbacks[0].init_args.criterion` must be one of [l1, taylor, oracle, random, explicit, bn_scale], "
     "got 'l3'."),
    ("yaml-prune-epoch", ("prune_at_epoch: 10", "prune_at_epoch: ten"),
     "`trainer.callbacks[0].init_args.prune_at_epoch` must be an integer or null, got 'ten' (a string)."),
    ("yaml-optimizer-typo", ("init_args: {lr: 0.05,", "init_args: {lrr: 0.05,"),
     "`model.init_args.optimizer.init_args` must hold arguments of torch.optim.sgd.SGD (params, lr, momentum, "
     "dampening, weight_decay, nesterov, maximize, foreach, differentiable, fused), got unknown 'lrr'."),
]


def _one_line_failure(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("lightning-prune: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(("build", "expected"), [row[1:] for row in NO_CODE], ids=[row[0] for row in NO_CODE])
def test_no_code_runs_from_any_corner_of_a_config(build, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "ran"
    line = _one_line_failure(build(tmp_path, marker), capsys)
    assert expected in line
    assert not marker.exists(), "a class named by the config was called"


@pytest.mark.parametrize(("args", "expected"), [row[1:] for row in WRONG_VALUES], ids=[row[0] for row in WRONG_VALUES])
def test_wrong_value_flags_name_the_place_the_choices_or_the_type(args, expected, capsys):
    assert _one_line_failure(["fit", "--config", QUICKSTART, *args], capsys) == f"lightning-prune: error: {expected}"


@pytest.mark.parametrize(("args", "expected"), [row[1:] for row in PREDICT_VALUES],
                         ids=[row[0] for row in PREDICT_VALUES])
def test_wrong_choices_of_video_llm_runs_are_named_before_any_model_is_built(args, expected, capsys):
    line = _one_line_failure(["predict", "--config", DYCOKE_TINY, *args], capsys)
    assert line == f"lightning-prune: error: {expected}"


@pytest.mark.parametrize(("edit", "expected"), [row[1:] for row in YAML_VALUES], ids=[row[0] for row in YAML_VALUES])
def test_wrong_values_in_yaml_name_their_place(edit, expected, tmp_path, capsys):
    line = _one_line_failure(_yaml_row(tmp_path, *edit), capsys)
    assert line == f"lightning-prune: error: {expected}"


def test_empty_and_binary_config_files_are_named(tmp_path, capsys):
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    line = _one_line_failure(["fit", "--config", str(tmp_path / "empty.yaml")], capsys)
    assert line.endswith(f"must be a YAML file with settings, got '{tmp_path / 'empty.yaml'}', which is empty.")
    line = _one_line_failure(["fit", "--config", str(tmp_path / "binary.yaml")], capsys)
    assert line.endswith(f"`--config` must be a YAML text file, got '{tmp_path / 'binary.yaml'}', which is binary.")


_QUIET = ["--trainer.enable_progress_bar=false", "--trainer.num_sanity_val_steps=0", "--trainer.logger=false",
          "--trainer.enable_checkpointing=false"]


def _checkpoint_claiming(tmp: Path, model: str) -> str:
    """A Lightning checkpoint of LeNet5-Mini's weights whose hyperparameters name ``model`` (same shapes)."""
    state = {f"model.{key}": value for key, value in build_model("lenet5_mini").state_dict().items()}
    path = tmp / "other.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"model": model, "model_kwargs": {}}}, path)
    return str(path)


# (id, argv builder(tmp) -> argv, fragment of the one-line error): runs that would do nothing, refused before training
SILENT = [
    ("max-steps-before-prune-epoch",
     # 5 batches per epoch x 10 epochs before pruning = 50 steps: max_steps 50 stops right before the prune epoch
     lambda t: ["fit", "--config", QUICKSTART, *_QUIET, "--trainer.limit_train_batches=5", "--trainer.max_steps=50"],
     "`trainer.max_steps` must be above the 50 optimizer steps before pruning at epoch 10 (5 per epoch), got 50"),
    ("explicit-empty-indices",
     lambda t: ["fit", "--config", QUICKSTART, *_QUIET, "--trainer.callbacks.init_args.criterion", "explicit",
                "--trainer.callbacks.init_args.layers", "null", "--trainer.callbacks.init_args.indices",
                "{conv1: []}"],
     "`indices` must list at least one unit to prune per layer, got none for ['conv1']"),
    ("schedule-step-of-zero-units",
     lambda t: ["fit", "--config", QUICKSTART, *_QUIET, "--trainer.callbacks.init_args.schedule",
                "{at: [[10, 0.1], [11, 1.0]]}"],
     "`schedule` step 1 (epoch 10, fraction 0.1) must prune at least one unit, got 0"),
    ("study-checkpoint-of-another-model",
     lambda t: ["study", "--config", STUDY, "--pretrain", "null", "--study_dir", str(t / "study"),
                "--checkpoint", _checkpoint_claiming(t, "lenet5_mini_d6")],
     "`--checkpoint` must hold weights of the model 'lenet5_mini', got"),
]


def _mnist_with_label(tmp: Path, label: int) -> str:
    raw = tmp / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, count in (("train", 8), ("t10k", 4)):
        labels = np.arange(count, dtype=np.uint8) % 10
        labels[-1] = label if split == "train" else labels[-1]
        images = struct.pack(">IIII", 0x803, count, 28, 28) + bytes(count * 784)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(images)
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, count) + labels.tobytes())
    return str(tmp / "mnist")


# (id, argv builder(tmp) -> argv, fragment): data and model that do not fit each other, said before the first step
MISMATCH = [
    ("class-count", lambda t: ["fit", "--config", QUICKSTART, *_QUIET, "--model.init_args.model_kwargs",
                               "{num_classes: 5}"],
     "`model` 'lenet5_mini' with {'num_classes': 5} must output one logit per class of the data, got 5 outputs for "
     "MNISTMiniDataModule's 10 classes."),
    ("input-channels", lambda t: ["fit", "--config", QUICKSTART, *_QUIET, "--model.init_args.model_kwargs",
                                  "{in_channels: 3}"],
     "`model` 'lenet5_mini' with {'in_channels': 3} must get images of 3 channels, got a batch [64, 1, 32, 32] "
     "of 1 from MNISTMiniDataModule."),
    ("mnist-label-out-of-range", lambda t: ["fit", "--config", QUICKSTART, *_QUIET, "--data",
                                            "lightning_prune.data.MNISTDataModule", "--data.init_args.root",
                                            _mnist_with_label(t, 200), "--data.init_args.download=false"],
     "train-labels-idx1-ubyte` must hold labels in [0, 10), got 200 at record 7 (1 such records)."),
]


@pytest.mark.parametrize(("build", "expected"), [row[1:] for row in MISMATCH], ids=[row[0] for row in MISMATCH])
def test_data_and_model_that_disagree_are_one_line_naming_both(build, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert expected in _one_line_failure(build(tmp_path), capsys)


@pytest.mark.parametrize(("build", "expected"), [row[1:] for row in SILENT], ids=[row[0] for row in SILENT])
def test_runs_that_would_do_nothing_are_refused_before_training(build, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = _one_line_failure(build(tmp_path), capsys)
    assert expected in line
    assert not list(tmp_path.rglob("*.ckpt*")) or "checkpoint" in expected  # nothing trained, nothing saved


def test_annotation_files_that_are_empty_or_not_json_are_named_with_their_line(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match=r"`annotation_file` must hold at least one record, got .*empty.jsonl"):
        read_annotations(empty)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"video": "a.mp4", "question": "q", "options": ["x"], "answer": "A"}\n{"video": oops}\n')
    with pytest.raises(ValueError, match=r"one JSON object per line, got .*broken.jsonl line 2: Expecting value "
                                         r"\(column 11\)"):
        read_annotations(broken)


def test_study_files_of_the_wrong_shape_are_named_with_the_remedy(tmp_path):
    from lightning_prune.study.prepare import ensure_masks
    from lightning_prune.study.report import TRIAL_KEYS, read_json
    from lightning_prune.study.spec import StudyConfig

    trial = tmp_path / "trial.json"
    trial.write_text("{}")
    with pytest.raises(ValueError, match=r"trial.json` must be an object with trial_id \(str\), mask_id \(int\), "
                                         r"repeat \(int\), layer_masks \(dict\).*got keys \[\]\. Retrain it\."):
        read_json(trial, "Retrain it.", TRIAL_KEYS)
    (tmp_path / "masks.json").write_text('{"masks": 5}')
    with pytest.raises(ValueError, match=r"masks.json` must be an object with masks \(list\), got keys \['masks'\]"):
        ensure_masks(StudyConfig(study_dir=tmp_path))
    (tmp_path / "masks.json").write_text('{"masks": [7]}')
    with pytest.raises(ValueError, match=r"masks.json` must list masks with mask_id and layer_masks, got 7\."):
        ensure_masks(StudyConfig(study_dir=tmp_path))


# ------------------------------------------------------------------------------------------ checkpoints and resumes
def _pruning_config(tmp: Path, layers: str, extra: str = "") -> str:
    config = yaml.safe_load(Path(QUICKSTART).read_text())
    config["trainer"].update(max_epochs=2, limit_train_batches=4, limit_val_batches=1, enable_progress_bar=False,
                             logger=[{"class_path": "lightning.pytorch.loggers.CSVLogger",
                                      "init_args": {"save_dir": "runs", "name": "plan"}}])
    pruning = config["trainer"]["callbacks"][0]["init_args"]
    pruning.update(layers=yaml.safe_load(layers), prune_at_epoch=1, save_pretrained=False)
    if extra:
        pruning.update(yaml.safe_load(extra))
    path = tmp / f"plan{len(list(tmp.glob('plan*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_resuming_under_another_prune_plan_names_both_and_can_be_allowed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", _pruning_config(tmp_path, "{conv1: 0.5}")])
    (pruned,) = (tmp_path / "runs").rglob("epoch=1-*.ckpt")
    assert torch.load(pruned, weights_only=True)["lightning_prune"]["plan"]["layers"] == {"conv1": 0.5}
    capsys.readouterr()
    changed = _pruning_config(tmp_path, "{conv2: 0.5}")
    line = _one_line_failure(["fit", "--config", changed, "--trainer.max_epochs=3", f"--ckpt_path={pruned}"], capsys)
    assert line == (
        "lightning-prune: error: `Pruning` must resume with the plan its checkpoint was made with, got a different "
        f"one in ['layers']: checkpoint {pruned} has {{layers: {{'conv1': 0.5}}}}, the config has {{layers: "
        "{'conv2': 0.5}}. Restore those settings, or set `allow_plan_change: true` to prune by the new plan on top."
    )
    allowed = _pruning_config(tmp_path, "{conv2: 0.5}", "{allow_plan_change: true}")
    main(["fit", "--config", allowed, "--trainer.max_epochs=3", f"--ckpt_path={pruned}"])
    (last,) = (tmp_path / "runs").rglob("epoch=2-*.ckpt")
    record = torch.load(last, weights_only=True)["lightning_prune"]
    assert record["plan"]["layers"] == {"conv2": 0.5} and set(record["pruning"]["indices"]) >= {"conv2"}


def test_checkpoints_are_written_whole_or_not_at_all_and_name_the_target(tmp_path, monkeypatch):
    import errno

    from lightning_prune.callbacks._checkpoints import AtomicCheckpointIO

    target = tmp_path / "ckpts" / "last.ckpt"
    writer = AtomicCheckpointIO()
    writer.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, target)
    real_save = torch.save

    def full_disk(obj, file, *args, **kwargs):
        file.write(b"PK\x03\x04 half a checkpoint")  # what reaches the disk before it fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError) as error:
        writer.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, target)
    monkeypatch.setattr(torch, "save", real_save)
    assert error.value.filename == str(target) and error.value.errno == errno.ENOSPC
    assert torch.load(target, weights_only=True)["epoch"] == 1  # the previous checkpoint is intact
    assert sorted(path.name for path in target.parent.iterdir()) == ["last.ckpt"]  # no temporary file left


def test_an_unreadable_last_checkpoint_is_moved_aside_once_and_the_phase_restarts(tmp_path):
    from lightning_prune.callbacks._checkpoints import set_aside_unreadable

    last = tmp_path / "last.ckpt"
    torch.save({"epoch": 3}, last)
    assert set_aside_unreadable(last, "pretraining") is False and last.is_file()
    for content in (b"", last.read_bytes()[:100]):  # a 0-byte file (full disk) and a truncated one
        last.write_bytes(content)
        with pytest.warns(UserWarning, match=r"last.ckpt could not be read \(truncated, e.g. by a full disk\): moved "
                                             r"to last.ckpt.unreadable2?; pretraining starts again"):
            assert set_aside_unreadable(last, "pretraining") is True
        assert not last.exists()
    assert (tmp_path / "last.ckpt.unreadable").read_bytes() == b""
    assert len((tmp_path / "last.ckpt.unreadable2").read_bytes()) == 100


def test_fit_on_a_full_disk_leaves_no_half_checkpoint_and_names_it(tmp_path, monkeypatch, capsys):
    import errno

    monkeypatch.chdir(tmp_path)

    def full_disk(obj, file, *args, **kwargs):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    line = _one_line_failure(["fit", "--config", _pruning_config(tmp_path, "{conv1: 0.5}"), "--trainer.max_epochs=1",
                              "--trainer.callbacks.init_args.prune_at_epoch=0"], capsys)
    assert line.startswith("lightning-prune: error: `")
    assert "epoch=0-step=4.ckpt` could not be written: No space " in line
    assert not [path for path in tmp_path.rglob("*") if path.is_file() and "ckpt" in path.name]


# ------------------------------------------------------------------------------------------------- messages
def test_default_root_dir_moves_the_default_loggers_too_and_wandb_leaves_no_temporary_files(tmp_path, monkeypatch):
    """The full-disk and read-only messages say "write elsewhere (--trainer.default_root_dir ...)": it must work.
    And W&B's service leaves nothing in the temporary folder (its folder and stats socket went to /tmp before)."""
    import tempfile

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)
    main(["fit", "--config", QUICKSTART, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
          "--trainer.limit_val_batches=1", "--trainer.callbacks.init_args.prune_at_epoch=0",
          "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path / 'elsewhere'}"])
    assert not (tmp_path / "runs").exists()
    assert len(list((tmp_path / "elsewhere").rglob("metrics.csv"))) == 1
    assert list((tmp_path / "elsewhere").rglob("offline-run-*")) and list((tmp_path / "elsewhere").rglob("*.ckpt"))
    assert list((tmp_path / "tmp").iterdir()) == []


def test_an_error_in_a_spawned_process_is_its_own_line():
    from torch.multiprocessing.spawn import ProcessRaisedException

    from lightning_prune._errors import one_line_error

    child = (  # what torch.multiprocessing reports: the child's traceback, its error last
        "\n\n-- Process 0 terminated with the following error:\nTraceback (most recent call last):\n"
        '  File "/x/torch/multiprocessing/spawn.py", line 90, in _wrap\n    fn(i, *args)\n'
        "ValueError: `mode: physical` must not be used with strategy 'ddp_spawn', got ddp_spawn. Use `mode: mask`.\n"
    )
    assert one_line_error(ProcessRaisedException(child, 0, 123), "fit") == (
        "`mode: physical` must not be used with strategy 'ddp_spawn', got ddp_spawn. Use `mode: mask`."
    )
    with pytest.raises(ProcessRaisedException):  # a bug in the child keeps its traceback
        one_line_error(ProcessRaisedException(child.replace("ValueError", "KeyError"), 0, 123), "fit")


def test_load_pruned_names_a_plain_pickle_without_torchs_advice(tmp_path):
    import pickle

    from lightning_prune.pruning.checkpoint import load_pruned

    path = tmp_path / "pickled.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": {"w": [1.0]}}, protocol=4))
    with pytest.raises(ValueError) as error:
        load_pruned(torch.nn.Linear, path)
    assert str(error.value) == (
        f"checkpoint '{path}' must be a torch.save checkpoint of tensors and plain values, got a pickle that safe "
        "loading refuses (Unsupported operand 149): not loaded. Save the weights again with torch.save, or use a "
        "checkpoint written by Lightning."
    )


def test_a_hub_tokenizer_not_in_the_cache_is_refused_at_once_when_offline(monkeypatch):
    import time

    from lightning_prune.data.text import load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=r"`tokenizer` must be a local folder, or a Hub id already in the "
                                                r"Hugging Face cache when offline .*got 'lightning-prune-tests/none'"):
        load_tokenizer("lightning-prune-tests/none")
    assert time.perf_counter() - started < 5  # no retries (transformers tried for 55 s)


@pytest.mark.parametrize("reader", ["text", "conversations"])
def test_malformed_jsonl_of_text_and_conversations_names_file_and_line(reader, tmp_path):
    from lightning_prune.data.llava_instruct import read_conversations
    from lightning_prune.data.text import read_documents

    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "fine"}\n\n{"text": "broken"\n')
    with pytest.raises(ValueError, match=r"must hold one JSON object per line, got .*data.jsonl line 3: Expecting"):
        read_documents(path) if reader == "text" else read_conversations(path, tmp_path)


def test_a_pickle_weights_file_in_a_model_folder_is_refused_without_torchs_advice(tmp_path):
    import os

    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from lightning_prune.modules.causal_lm import build_causal_lm

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    folder = tmp_path / "model"
    LlamaForCausalLM(config).save_pretrained(folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)

    torch.save({**state, "payload": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError) as error:
        build_causal_lm(str(folder), None, "float32", "sdpa")
    assert str(error.value) == (
        f"`model` '{folder}' must hold safetensors, or weights of tensors only, got a pickle weights file whose "
        "loading would call posix.system: refused. Use a model saved as safetensors (save_pretrained(..., "
        "safe_serialization=True) where you trust it)."
    )
    assert not (tmp_path / "ran").exists()
