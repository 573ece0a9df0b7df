"""Local worker processes and Ray run the missing trials of a study and reproduce its results.

Ray is tested on a real two-node local cluster (`ray start --head` + `ray start --address`) with a worker killed
partway, which also covers a plain run of trials as Ray tasks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from study_fakes import copy_study

from lightning_prune.study import executors
from lightning_prune.study.report import read_results_csv
from lightning_prune.study.runner import run_study


def _rows(study_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in read_results_csv(study_dir / "results.csv")]


def _missing(finished, destination: Path, count: int, **overrides):
    config, _ = finished
    total = len(list(Path(config.study_dir, "trials").glob("*.json")))
    return copy_study(config, destination, keep=total - count, **overrides)


@pytest.mark.slow  # spawned worker processes
def test_local_workers_run_missing_trials_in_spawned_processes(finished, tmp_path):
    config, summary = finished
    copy = _missing(finished, tmp_path / "copy", 1, workers=2)  # one unit: the pool spawns one worker
    assert run_study(copy) == summary
    assert _rows(tmp_path / "copy") == _rows(Path(config.study_dir))
    record = json.loads(sorted((tmp_path / "copy" / "trials").glob("*.json"))[-1].read_text())
    assert record["path"] == "single"


def test_execute_without_units_does_nothing(finished):
    config, _ = finished
    executors.execute(config, [], on_done=lambda n: pytest.fail("nothing to report"))
    assert executors.visible_gpus(config) == 0  # accelerator cpu


def test_executor_registry_is_what_the_config_accepts(finished, monkeypatch):
    import dataclasses

    from lightning_prune.study.validation import validate

    config, _ = finished
    assert executors.executor_names() == ("local", "ray")
    with pytest.raises(ValueError, match=r"`--executor` must be one of \['local', 'ray'\], got 'slurm'"):
        validate(dataclasses.replace(config, executor="slurm"))
    # A newly registered executor is a valid choice at once: the registry is the list of choices.
    monkeypatch.setitem(executors._EXECUTORS, "slurm", executors.run_in_process)
    validate(dataclasses.replace(config, executor="slurm"))


def test_execute_refuses_an_unregistered_executor(finished):
    import dataclasses

    config, _ = finished
    bad = dataclasses.replace(config, executor="slurm")
    with pytest.raises(ValueError, match=r"`executor` must be one of \['local', 'ray'\], got 'slurm'"):
        executors.execute(bad, [([], False)], on_done=lambda n: None)


# ------------------------------------------------------------------------- a real multi-process local Ray cluster
def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cluster_processes(temp_dir: str, port: int) -> list:
    """The processes of the cluster this test started (found by its temp dir or GCS port) and their children."""
    import psutil

    mine = []
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if temp_dir in line or f"127.0.0.1:{port}" in line:
            mine.append(proc)
    children = [child for proc in mine for child in _safe_children(proc)]
    return list({proc.pid: proc for proc in mine + children}.values())


def _safe_children(proc) -> list:
    import psutil

    try:
        return proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.fixture
def ray_cluster(tmp_path):
    """`ray start --head` plus a second `ray start --address` on this machine: two nodes of one CPU each.

    Ray's GCS listens on every interface whatever the node address, so the cluster takes a fresh token (Ray's token
    authentication) that only this test's processes know; the study's driver runs in its own process with it (Ray
    reads the token when it is imported). Teardown kills exactly the processes it started.
    """
    import os
    import secrets
    import shutil
    import subprocess
    import sys
    import tempfile

    import lightning_prune

    pytest.importorskip("ray")
    ray_bin = str(Path(sys.executable).with_name("ray"))
    root = str(Path(lightning_prune.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    temp_dir, port = tempfile.mkdtemp(prefix="ray", dir="/tmp"), _free_port()  # short: Ray's socket paths
    common = ["--num-cpus=1", "--num-gpus=0", "--object-store-memory=100000000", "--disable-usage-stats"]
    try:
        for command in (
            ["--head", f"--port={port}", f"--temp-dir={temp_dir}", "--include-dashboard=false"],
            [f"--address=127.0.0.1:{port}"],
        ):
            started = subprocess.run([ray_bin, "start", "--node-ip-address=127.0.0.1", *command, *common], env=env,
                                     capture_output=True, text=True, timeout=300)
            assert started.returncode == 0, started.stderr[-3000:]
        yield {"address": f"127.0.0.1:{port}", "temp_dir": temp_dir, "port": port, "env": env}
    finally:
        import psutil

        processes = _cluster_processes(temp_dir, port)
        for proc in processes:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(processes, timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _kill_one_trial_worker(cluster: dict, trials_dir: Path, before: int, killed: list, stop) -> None:
    """Once a new trial record exists, SIGKILL one Ray worker process that is running a unit (`ray::_ray_unit`)."""
    import time

    while not stop.is_set():
        if len(list(trials_dir.glob("*.json"))) > before:
            for proc in _cluster_processes(cluster["temp_dir"], cluster["port"]):
                try:
                    running = " ".join(proc.cmdline()).startswith("ray::_ray_unit")
                except Exception:
                    continue
                if running:
                    killed.append({p.name: p.stat().st_mtime_ns for p in trials_dir.glob("*.json")})
                    proc.kill()
                    return
        time.sleep(0.2)


_DRIVER = """
import json, pickle, sys
from lightning_prune.study.runner import run_study
print(json.dumps(run_study(pickle.load(open(sys.argv[1], "rb")))))
"""


@pytest.mark.slow  # a two-node Ray cluster
def test_ray_study_survives_a_killed_worker_on_a_two_node_cluster(finished, ray_cluster, tmp_path):
    import pickle
    import subprocess
    import sys
    import threading

    config, summary = finished
    copy = _missing(finished, tmp_path / "copy", 4, executor="ray", address=ray_cluster["address"],
                    cpus_per_trial=1.0)
    trials_dir = Path(copy.study_dir) / "trials"
    before = len(list(trials_dir.glob("*.json")))
    killed: list[dict] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_one_trial_worker, args=(ray_cluster, trials_dir, before, killed, stop))
    killer.start()
    (tmp_path / "config.pkl").write_bytes(pickle.dumps(copy))
    try:
        driver = subprocess.run([sys.executable, "-c", _DRIVER, str(tmp_path / "config.pkl")], env=ray_cluster["env"],
                                capture_output=True, text=True, timeout=900)
    finally:
        stop.set()
        killer.join()
    assert driver.returncode == 0, driver.stderr[-3000:]
    assert json.loads(driver.stdout.strip().splitlines()[-1]) == summary  # the killed unit ran again elsewhere
    assert killed, "no worker was running a trial once the first record was written"
    after = {p.name: p.stat().st_mtime_ns for p in trials_dir.glob("*.json")}
    assert len(after) == len(list(Path(config.study_dir, "trials").glob("*.json")))
    assert {name: after[name] for name in killed[0]} == killed[0]  # no finished trial was written again
    assert _rows(tmp_path / "copy") == _rows(Path(config.study_dir))


def test_local_ray_keeps_its_files_and_token_in_the_study_and_removes_them(finished, tmp_path):
    """`--executor ray` without `--address`: a Ray of its own, files under `study_dir/.ray` (removed at the end),
    a token that never reaches `~/.ray`, and the same results as the finished study."""
    import os
    import pickle
    import shutil
    import subprocess
    import sys
    import tempfile

    pytest.importorskip("ray")
    config, summary = finished
    short = Path(tempfile.mkdtemp(prefix="s", dir="/tmp"))  # Ray's socket paths must stay short
    try:
        copy = _missing(finished, short / "copy", 1, executor="ray", cpus_per_trial=1.0)
        (tmp_path / "config.pkl").write_bytes(pickle.dumps(copy))
        env = {**os.environ, "HOME": str(tmp_path / "home"), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS"):
            env.pop(name, None)
        driver = subprocess.run([sys.executable, "-c", _DRIVER, str(tmp_path / "config.pkl")], env=env,
                                capture_output=True, text=True, timeout=600)
        assert driver.returncode == 0, driver.stderr[-3000:]
        assert json.loads(driver.stdout.strip().splitlines()[-1]) == summary
        assert f"Ray: a local instance on 127.0.0.1 for this study, its files in {short / 'copy' / '.ray'}." in (
            driver.stdout + driver.stderr)
        assert not (short / "copy" / ".ray").exists()  # the session folder is gone with the instance
        assert not (tmp_path / "home" / ".ray").exists()  # no token file left in the user's home
    finally:
        shutil.rmtree(short, ignore_errors=True)
