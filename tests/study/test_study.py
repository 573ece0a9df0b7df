"""End to end: a real (tiny) study through the Lightning Trainer, its outputs, resumption, refusal and shards."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from study_fakes import copy_study

from lightning_prune.models import build_model
from lightning_prune.pruning import PruningStructure
from lightning_prune.study import executors, run, runner
from lightning_prune.study.prepare import plan_trials
from lightning_prune.study.report import RESULT_COLUMNS, SUMMARY_KEYS, read_results_csv
from lightning_prune.study.run import build_datamodule, cpu_threads, load_network_state, run_batched_trials
from lightning_prune.study.runner import run_study
from lightning_prune.study.spec import RecipeConfig


def _without_seconds(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in read_results_csv(path)]


def test_study_writes_every_output(finished):
    config, summary = finished
    study_dir = Path(config.study_dir)
    rows = read_results_csv(study_dir / "results.csv")
    masks = json.loads((study_dir / "masks.json").read_text())["masks"]
    assert 4 <= len(masks) <= 6 and {"l1", "oracle"} <= {c for m in masks for c in m["criterion"].split(";")}
    assert len(rows) == 2 * len(masks) == summary["num_trials"]
    assert tuple(rows[0]) == RESULT_COLUMNS and tuple(summary) == SUMMARY_KEYS
    assert json.loads((study_dir / "summary.json").read_text()) == summary
    for png in ("scatter_acc.png", "scatter_loss.png"):
        assert (study_dir / png).read_bytes()[:4] == b"\x89PNG"
    # The summary equals scipy on the CSV's per-mask means.
    ids = sorted({r["mask_id"] for r in rows})
    means = {c: [np.mean([r[c] for r in rows if r["mask_id"] == m]) for m in ids] for c in RESULT_COLUMNS[4:11]}
    assert summary["kendall_tau_acc"] == pytest.approx(stats.kendalltau(means["pruned_train_loss"],
                                                                        means["final_test_acc"]).statistic)  # fmt: skip
    assert summary["oracle_mask_id"] == ids[int(np.argmin(means["pruned_train_loss"]))]
    # One W&B run per trial, the pretraining and the summary, all offline in the study folder.
    runs = list((study_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == len(rows) + 2
    tables = list((study_dir / "wandb").glob("offline-run-*/files/media/table/results_*.table.json"))
    assert len(tables) == 1 and len(json.loads(tables[0].read_text())["data"]) == len(rows)
    media = tables[0].parents[1]
    assert len(list(media.glob("table/scatter/*.table.json"))) == 1 and len(list(media.glob("images/figures/*"))) == 2
    assert summary["kendall_tau_acc"] is not None and summary["kendall_tau_short_vs_full"] is not None


def test_trial_record_matches_an_independent_prune_and_evaluate(finished):
    config, _ = finished
    study_dir = Path(config.study_dir)
    record = json.loads((study_dir / "trials" / "m00001-r0.json").read_text())
    network = build_model("lenet5_mini")
    network.load_state_dict(load_network_state(study_dir / "pretrained.ckpt"))
    PruningStructure(network, torch.zeros(1, 1, 32, 32)).prune(record["layer_masks"])
    assert network.conv1.out_channels == 5 and network.conv2.in_channels == 5
    datamodule = build_datamodule(config)
    datamodule.setup("fit")
    images, labels = datamodule.train_tensors()
    with torch.no_grad():
        logits = network.eval()(images)
    assert record["pruned_train_loss"] == pytest.approx(float(F.cross_entropy(logits, labels)), abs=1e-5)
    assert record["pruned_train_acc"] == pytest.approx(float((logits.argmax(1) == labels).float().mean()))
    assert record["params"] == sum(p.numel() for p in network.parameters())
    assert record["final_test_acc"] == max(entry["test_acc"] for entry in record["history"])
    assert len(record["history"]) == config.retrain.epochs


def test_rerun_retrains_nothing(finished, monkeypatch):
    config, summary = finished
    runs_before = len(list((Path(config.study_dir) / "wandb").glob("offline-run-*")))

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished trial was run again")

    monkeypatch.setattr(executors, "run_unit", must_not_run)
    monkeypatch.setattr(executors, "use_batched_path", must_not_run)
    assert run_study(config) == summary
    assert len(list((Path(config.study_dir) / "wandb").glob("offline-run-*"))) == runs_before  # no new summary run


def test_interrupted_study_resumes_to_the_same_results(finished, tmp_path, monkeypatch):
    config, _ = finished
    total = len(list(Path(config.study_dir, "trials").glob("*.json")))
    copy = copy_study(config, tmp_path / "copy", keep=total - 4)
    real = run.run_single_trial
    calls = []

    def killed_in_second_trial(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies in the middle of a trial
        return real(*args, **kwargs)

    monkeypatch.setattr(run, "run_single_trial", killed_in_second_trial)
    with pytest.raises(KeyboardInterrupt):
        run_study(copy)
    assert len(list((tmp_path / "copy" / "trials").glob("*.json"))) == total - 3  # one more trial was saved
    monkeypatch.setattr(run, "run_single_trial", real)
    run_study(copy)
    resumed = _without_seconds(tmp_path / "copy" / "results.csv")
    assert resumed == _without_seconds(Path(config.study_dir) / "results.csv")
    assert json.loads((tmp_path / "copy" / "summary.json").read_text()) == finished[1]


def test_changed_config_is_refused_before_any_compute(finished, tmp_path, monkeypatch):
    config, _ = finished
    copy = copy_study(config, tmp_path / "copy")
    monkeypatch.setattr(runner, "ensure_pretrained", lambda *a: pytest.fail("computed before refusing"))
    changed = dataclasses.replace(copy, retrain=dataclasses.replace(copy.retrain, epochs=3))
    with pytest.raises(ValueError, match=r"a different config.*retrain\.epochs \(stored 2, given 3\)"):
        run_study(changed)
    resampled = dataclasses.replace(copy, masks=dataclasses.replace(copy.masks, sample=5), repeats=1)
    with pytest.raises(ValueError, match=r"masks\.sample \(stored 4, given 5\); repeats \(stored 2, given 1\)"):
        run_study(resampled)


def test_shards_partition_the_trials_and_the_last_one_reports(finished, tmp_path, monkeypatch):
    config, summary = finished
    copy = copy_study(config, tmp_path / "copy")
    seen: dict[str, list] = {}

    def replay(config_, trials, batched, gpu=None):  # writes the finished study's records instead of training
        for trial in trials:
            seen.setdefault(config_.shard, []).append(trial)
            record = Path(config.study_dir) / "trials" / f"{trial.trial_id}.json"
            shutil.copy2(record, Path(config_.study_dir) / "trials" / record.name)
        return [t.trial_id for t in trials]

    monkeypatch.setattr(executors, "run_unit", replay)
    monkeypatch.setattr(executors, "use_batched_path", lambda *a: False)
    for index in range(3):
        result = run_study(dataclasses.replace(copy, shard=f"{index}/3"))
        assert all(t.index % 3 == index for t in seen[f"{index}/3"])
        assert (result is None) == (index < 2) and (tmp_path / "copy" / "summary.json").is_file() == (index == 2)
    everything = plan_trials(copy, json.loads((tmp_path / "copy" / "masks.json").read_text())["masks"])
    assert sorted(t.index for ts in seen.values() for t in ts) == [t.index for t in everything]
    assert result == summary


def test_batched_path_reproduces_one_at_a_time(finished):
    config, _ = finished
    study_dir = Path(config.study_dir)
    singles = [json.loads(p.read_text()) for p in sorted((study_dir / "trials").glob("*-r1.json"))]
    trials = [t for t in plan_trials(config, json.loads((study_dir / "masks.json").read_text())["masks"]) if t.repeat]
    state = load_network_state(study_dir / "pretrained.ckpt")
    with cpu_threads(1):
        records = run_batched_trials(config, trials, state, build_datamodule(config), gpu=None)
    for single, batched in zip(singles, records, strict=True):
        assert single["path"] == "single" and batched["path"] == "batched"
        assert batched["trial_id"] == single["trial_id"]
        for key in ("pruned_train_loss", "pruned_train_acc", "pruned_test_loss", "pruned_test_acc"):
            assert batched[key] == pytest.approx(single[key], abs=1e-5)
        for mine, theirs in zip(batched["history"], single["history"], strict=True):
            assert mine == pytest.approx(theirs, abs=1e-4)
        assert (batched["params"], batched["macs"]) == (single["params"], single["macs"])
        assert batched["final_test_acc"] == pytest.approx(single["final_test_acc"], abs=1e-4)


def test_batched_path_choice(finished):
    config, _ = finished
    trials = plan_trials(config, json.loads((Path(config.study_dir) / "masks.json").read_text())["masks"])
    assert executors.use_batched_path(dataclasses.replace(config, batching="off"), trials) is False
    assert executors.use_batched_path(dataclasses.replace(config, batching="on"), trials) is True
    assert executors.use_batched_path(dataclasses.replace(config, batching="auto"), trials) is None  # measured
    assert executors.use_batched_path(dataclasses.replace(config, batching="auto"), trials[:2]) is False
    units = executors.make_units(dataclasses.replace(config, batch_masks=4), trials, batched=True)
    assert [len(u) for u, _ in units] == [4, 2, 4, 2] and all({t.repeat for t in u} == {u[0].repeat} for u, _ in units)
    resnet = dataclasses.replace(config, model="cifar_resnet20", batching="auto")
    assert executors.use_batched_path(resnet, trials) is False


@pytest.mark.parametrize(("single_seconds", "batched_seconds", "batch_masks"), [(2.0, 1.0, 3), (1.0, 2.0, 64)])
def test_auto_batching_measures_the_real_paths_and_takes_the_faster(finished, tmp_path, monkeypatch, single_seconds,
                                                                    batched_seconds, batch_masks):  # fmt: skip
    config, summary = finished
    copy = copy_study(config, tmp_path / "copy", batching="auto", batch_masks=batch_masks)
    units = []

    def replay(config_, trials, batched, gpu=None):  # the finished records, timed as if this path took `seconds`
        units.append((len(trials), batched))
        for trial in trials:
            record = json.loads((Path(config.study_dir) / "trials" / f"{trial.trial_id}.json").read_text())
            record["seconds"] = batched_seconds if batched else single_seconds
            (Path(config_.study_dir) / "trials" / f"{trial.trial_id}.json").write_text(json.dumps(record))
        return [t.trial_id for t in trials]

    monkeypatch.setattr(executors, "run_unit", replay)
    run_study(copy)
    total = len(list(Path(config.study_dir, "trials").glob("*.json")))
    # one trial alone, then one small batched unit (at most PROBE_MASKS = 4 masks): real work, kept
    assert units[:2] == [(1, False), (min(batch_masks, executors.PROBE_MASKS), True)]
    rest = units[2:]
    assert all(batched == (batched_seconds < single_seconds) for _, batched in rest)
    assert sum(n for n, _ in units) == total


def test_cli_runs_a_study_from_yaml(finished, tmp_path):
    import yaml

    from lightning_prune.cli import main

    config, summary = finished
    copy = copy_study(config, tmp_path / "copy", keep=None)
    fields = dataclasses.asdict(copy)
    fields = json.loads(json.dumps(fields, default=str))
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(fields))
    main(["study", "--config", str(tmp_path / "study.yaml"), "--workers", "1"])
    assert json.loads((tmp_path / "copy" / "summary.json").read_text()) == summary


def test_unit_helpers():
    recipe = RecipeConfig()
    assert run.scheduler_factory(None) is None
    optimizer = run.optimizer_factory(recipe.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["lr"] == 1e-3
