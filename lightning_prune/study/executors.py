"""Where trials run: in this process, in local worker processes, or as Ray tasks on a cluster.

Work comes as *units*: a list of trials run together (one trial, or the masks of one batched fit). Every executor
calls `lightning_prune.study.worker.run_unit`, which writes each finished trial's record itself, so the results of a
unit survive whatever happens to the other units. ``on_done(n)`` is called with the number of trials of each
finished unit (the progress bar).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_prune.study.spec import StudyConfig
from lightning_prune.study.trial import Trial, trial_path
from lightning_prune.study.worker import run_unit

Unit = tuple[list[Trial], bool]  # (trials, batched)
OnDone = Callable[[int], None]


def visible_gpus(config: StudyConfig) -> int:
    """CUDA devices trials may use (none when the accelerator is forced to CPU)."""
    if config.accelerator == "cpu" or not torch.cuda.is_available():
        return 0
    return torch.cuda.device_count()


Executor = Callable[[StudyConfig, Sequence[Unit], OnDone], None]
_EXECUTORS: dict[str, Executor] = {}


def register_executor(name: str) -> Callable[[Executor], Executor]:
    """Make an executor available to `StudyConfig.executor` under `name` (a decorator)."""

    def register(executor: Executor) -> Executor:
        _EXECUTORS[name] = executor
        return executor

    return register


def executor_names() -> tuple[str, ...]:
    """Names `StudyConfig.executor` accepts, in registration order."""
    return tuple(_EXECUTORS)


def run_in_process(config: StudyConfig, units: Sequence[Unit], on_done: OnDone) -> None:
    """One unit after another in this process (GPU 0 when there is one)."""
    gpu = 0 if visible_gpus(config) else None
    for trials, batched in units:
        run_unit(config, trials, batched, gpu)
        on_done(len(trials))


# Set in each worker process by `_init_worker`: the GPU this worker is pinned to (None on CPU).
_WORKER_GPU: int | None = None


def _init_worker(slots) -> None:
    global _WORKER_GPU
    _WORKER_GPU = slots.get()


def _run_unit_in_worker(config: StudyConfig, trials: list[Trial], batched: bool) -> list[str]:
    return run_unit(config, trials, batched, _WORKER_GPU)


def run_local_workers(config: StudyConfig, units: Sequence[Unit], on_done: OnDone) -> None:
    """``config.workers`` spawned processes; worker k is pinned to GPU ``k % num_gpus`` when there are GPUs.

    On the first failure the units not yet started are cancelled and the error is raised; finished trials stay.
    """
    context = multiprocessing.get_context("spawn")
    gpus = visible_gpus(config)
    slots = context.Queue()
    for worker in range(config.workers):
        slots.put(worker % gpus if gpus else None)
    with ProcessPoolExecutor(
        max_workers=config.workers, mp_context=context, initializer=_init_worker, initargs=(slots,)
    ) as pool:
        pending = {pool.submit(_run_unit_in_worker, config, trials, batched): len(trials) for trials, batched in units}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    count = pending.pop(future)
                    future.result()
                    on_done(count)
        except BaseException:
            for future in pending:
                future.cancel()
            raise


@register_executor("local")
def run_local(config: StudyConfig, units: Sequence[Unit], on_done: OnDone) -> None:
    """`local`: in this process when ``config.workers`` is 1, else in that many spawned worker processes."""
    runner = run_in_process if config.workers == 1 else run_local_workers
    runner(config, units, on_done)


@register_executor("ray")
def run_ray(config: StudyConfig, units: Sequence[Unit], on_done: OnDone) -> None:
    """Ray tasks: on the cluster at ``config.address`` or an already initialised Ray, else a local Ray.

    Each task reserves ``cpus_per_trial`` CPUs and, when the cluster has GPUs, ``gpus_per_trial`` of a GPU (so
    that with 0.25 four small trials share one GPU); Ray sets the task's visible device. A task whose worker or
    node dies is retried (up to ``_RAY_RETRIES`` times) on another worker; a retried unit whose trials all have
    records already is not run again, so no finished trial runs twice. If the retries run out the study stops with
    the error and a rerun of the same command runs only the trials without records.
    """
    import ray

    with contextlib.ExitStack() as stack:
        if not ray.is_initialized():
            if config.address is None:
                stack.enter_context(local_ray(Path(config.study_dir)))
            else:
                ray.init(address=config.address, include_dashboard=False, log_to_driver=False)
        _run_ray_tasks(ray, config, units, on_done)


def _ray_temp_dir(study_dir: Path) -> Path:
    """``study_dir/.ray``, or a private folder under /tmp when that path is too long for Ray's socket paths."""
    inside = study_dir.resolve() / ".ray"
    if len(str(inside)) <= _RAY_TEMP_MAX:
        inside.mkdir(parents=True, exist_ok=True)
        return inside
    return Path(tempfile.mkdtemp(prefix="lp-ray-", dir="/tmp"))  # mode 0700, removed at the end like the other


@contextlib.contextmanager
def local_ray(study_dir: Path) -> Iterator[None]:
    """A Ray instance for this study only: node address 127.0.0.1, no dashboard, a fresh token only its processes
    know (never written to ``~/.ray``), its session folder inside the study folder, shut down and removed at the end.

    Ray's gRPC servers (GCS, raylet, workers) still listen on every interface whatever the node address (Ray has no
    setting for it); the token authenticates every call to them.
    """
    import ray

    temp = _ray_temp_dir(study_dir)
    saved = {name: os.environ.get(name) for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0")
    _reload_ray_auth()
    try:
        ray.init(include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1", _temp_dir=str(temp))
        rank_zero_info(f"Ray: a local instance on 127.0.0.1 for this study, its files in {temp}.")
        yield
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _reload_ray_auth()


def _reload_ray_auth() -> None:
    """Ray reads its auth settings once, when imported: make it read them again (Ray's own way of doing so)."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # a Ray without token authentication: the environment is all there is
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


# Ray puts Unix sockets at <temp>/session_<date>_<pid>/sockets/plasma_store: 107 bytes at most in all.
_RAY_TEMP_MAX = 44


def _run_ray_tasks(ray, config: StudyConfig, units: Sequence[Unit], on_done: OnDone) -> None:
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0 and config.accelerator != "cpu"
    task = ray.remote(
        num_cpus=config.cpus_per_trial, num_gpus=config.gpus_per_trial if has_gpus else 0, max_retries=_RAY_RETRIES
    )(_ray_unit)
    pending = {task.remote(config, trials, batched): len(trials) for trials, batched in units}
    try:
        while pending:
            finished, _ = ray.wait(list(pending), num_returns=1)
            for ref in finished:
                count = pending.pop(ref)
                ray.get(ref)
                on_done(count)
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise


# Retries of a task after its worker process or node died (Ray's own default for tasks, stated here on purpose).
_RAY_RETRIES = 3


def _ray_unit(config: StudyConfig, trials: list[Trial], batched: bool) -> list[str]:
    if all(trial_path(Path(config.study_dir), trial.trial_id).is_file() for trial in trials):
        return []  # a retry of a unit that finished before its worker died
    # Ray narrows CUDA_VISIBLE_DEVICES to the task's GPU, which is then device 0.
    gpu = 0 if torch.cuda.is_available() and config.accelerator != "cpu" else None
    return run_unit(config, trials, batched, gpu)


def execute(config: StudyConfig, units: Sequence[Unit], on_done: OnDone) -> None:
    """Run ``units`` with the executor the config names (one of `executor_names()`).

    Raises:
        ValueError: If no executor is registered under ``config.executor``.
    """
    if config.executor not in _EXECUTORS:
        raise ValueError(f"`executor` must be one of {list(_EXECUTORS)}, got {config.executor!r}.")
    if units:
        _EXECUTORS[config.executor](config, units, on_done)
