"""A study meets the faults users meet: a full disk, truncated files, a corrected config, an interrupt."""

from __future__ import annotations

import dataclasses
import errno
import json
import signal
from pathlib import Path

import pytest
import yaml
from lightning.pytorch import Callback
from study_fakes import copy_study, tiny_study

from lightning_prune.cli import main
from lightning_prune.study import prepare, report, run, runner
from lightning_prune.study.runner import run_study


def _killed(*args):
    raise RuntimeError("killed while drawing the masks")


def test_study_full_disk_on_the_figures_says_what_was_saved(finished, tmp_path, monkeypatch):
    config, summary = finished
    copy = copy_study(config, tmp_path / "copy", keep=None)
    real = report.write_atomic

    def disk_full_for_pngs(path, content):
        if Path(path).suffix == ".png":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, content)

    monkeypatch.setattr(report, "write_atomic", disk_full_for_pngs)
    message = r"results.csv and summary.json are complete in .*copy, but scatter_acc.png was not written \(No space"
    with pytest.warns(UserWarning, match=message + r" left on device\)\. Free space and rerun"):
        assert run_study(copy) == summary
    assert json.loads((tmp_path / "copy" / "summary.json").read_text()) == summary
    assert not list((tmp_path / "copy").glob("*.png"))


@pytest.mark.parametrize("name", ["trials/m00001-r0.json", "masks.json"])
def test_study_truncated_record_names_the_file_and_the_remedy(finished, tmp_path, name):
    config, _ = finished
    copy = copy_study(config, tmp_path / "copy", keep=None)
    path = tmp_path / "copy" / name
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match=rf"`{path}` must be a complete JSON file, got unreadable content .*Delete it"):
        run_study(copy)


def test_unfinished_preparation_takes_a_corrected_config(tiny_mnist_root, tmp_path, monkeypatch):
    config = tiny_study(tiny_mnist_root, tmp_path / "study")
    monkeypatch.setattr(runner, "ensure_masks", _killed)
    with pytest.raises(RuntimeError, match="killed"):
        run_study(config)
    pretrained = (tmp_path / "study" / "pretrained.ckpt").read_bytes()
    monkeypatch.undo()
    monkeypatch.setattr(prepare, "_pretrain", lambda *a: pytest.fail("pretrained again for a masks-only change"))
    corrected = dataclasses.replace(config, masks=dataclasses.replace(config.masks, sample=3), prepare_only=True)
    run_study(corrected)
    assert (tmp_path / "study" / "pretrained.ckpt").read_bytes() == pretrained
    assert len(json.loads((tmp_path / "study" / "masks.json").read_text())["masks"]) >= 3
    # Prepared now: a further change is refused as before.
    with pytest.raises(ValueError, match=r"a different config.*masks\.sample \(stored 3, given 4\)"):
        run_study(dataclasses.replace(corrected, masks=config.masks))


def test_unfinished_preparation_with_another_pretraining_drops_the_old_weights(tiny_mnist_root, tmp_path, monkeypatch):
    config = tiny_study(tiny_mnist_root, tmp_path / "study")
    monkeypatch.setattr(runner, "ensure_masks", _killed)
    with pytest.raises(RuntimeError, match="killed"):
        run_study(config)
    assert (tmp_path / "study" / "pretrain" / "last.ckpt").is_file()
    recipe = dataclasses.replace(config.pretrain, epochs=1)
    monkeypatch.setattr(runner, "ensure_pretrained", lambda *a: None)  # only the study_dir check runs
    with pytest.raises(RuntimeError, match="killed"):
        run_study(dataclasses.replace(config, pretrain=recipe))
    assert not (tmp_path / "study" / "pretrained.ckpt").exists()
    assert not (tmp_path / "study" / "pretrain").exists()


class _CtrlCAtEpoch(Callback):
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        raise KeyboardInterrupt


def test_ctrl_c_during_a_study_says_how_many_trials_finished_and_how_to_resume(finished, tmp_path, monkeypatch,
                                                                                capsys):  # fmt: skip
    config, _ = finished
    total = len(list(Path(config.study_dir, "trials").glob("*.json")))
    copy = copy_study(config, tmp_path / "copy", keep=total - 2)
    real_trainer = run.Trainer
    # Ctrl-C inside a real fit: Lightning catches it and exits with code 1, after ignoring further SIGINTs.
    monkeypatch.setattr(run, "Trainer", lambda **kw: real_trainer(**{**kw, "callbacks": [_CtrlCAtEpoch()]}))
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["study", "--config", _write_yaml(copy, tmp_path / "study.yaml")])
    finally:
        signal.signal(signal.SIGINT, handler)
    assert exit_info.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"lightning-prune: interrupted: Study 'tiny' interrupted: {total - 2} trials finished and saved in "
        f"{tmp_path / 'copy' / 'trials'}. Rerun the same command to resume; finished trials are not run again."
    )
    assert not any("Traceback" in line for line in err)


def test_ctrl_c_during_pretraining_says_it_resumes(tiny_mnist_root, tmp_path, monkeypatch):
    config = tiny_study(tiny_mnist_root, tmp_path / "study")
    def ctrl_c(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "ensure_pretrained", ctrl_c)
    with pytest.raises(runner.StudyInterrupted, match=r"interrupted while preparing .*finished pretraining epochs "
                                                      r"are kept\. Rerun the same command to resume\."):  # fmt: skip
        run_study(config)


def _write_yaml(config, path: Path) -> str:
    fields = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    path.write_text(yaml.safe_dump(fields))
    return str(path)


def test_study_full_disk_on_results_is_one_line_naming_the_file(finished, tmp_path, monkeypatch, capsys):
    config, _ = finished
    copy = copy_study(config, tmp_path / "copy", keep=None)
    real_open = open

    def no_space_for_csv(file, mode="r", *args, **kwargs):
        if "x" in mode and ".results.csv." in str(file):
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_space_for_csv)
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "--config", _write_yaml(copy, tmp_path / "study.yaml")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-2] == (
        f"lightning-prune: error: `{tmp_path / 'copy' / 'results.csv'}` could not be written: No space left on "
        "device. Free space on that disk, or write elsewhere (--trainer.default_root_dir, --study_dir)."
    )
    assert not list((tmp_path / "copy").glob(".results.csv.*"))  # no temporary left behind
