"""Where and how trials run: the executors (this process, local worker processes, Ray tasks on a cluster), a
registry of them by name, and the choice of path (one at a time, or many masks batched into one model).

Work comes as *units*: a list of trials run together (one trial, or the masks of one batched fit). Every executor
calls `lightning_prune.study.run.run_unit`, which writes each finished trial's record itself, so the results of a
unit survive whatever happens to the other units. ``on_done(n)`` is called with the number of trials of each
finished unit (the progress bar). A new executor is one function under ``@register_executor("name")``;
`StudyConfig.executor` accepts every registered name.

With ``batching: auto`` on a CPU the path is measured on the real path, not guessed: the first pending trial runs
one at a time and the next few (``PROBE_MASKS``, at most ``batch_masks``) of one repeat run batched, both through the
Trainer exactly as every other trial (their records are kept: the measurement costs no extra work), and the path
that took fewer seconds per trial retrains the rest.
"""

from __future__ import annotations

import contextlib
import json
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

from lightning_prune.models import build_model
from lightning_prune.modules.batched import supports_batching
from lightning_prune.study.run import run_unit
from lightning_prune.study.spec import StudyConfig, Trial, structural_kwargs, trial_path

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
    import ray  # optional (the `ray` extra): only the ray executor needs it

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
    import ray  # optional (the `ray` extra): only the ray executor needs it

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


# ------------------------------------------------------------------------------------------- choice of path
# Masks in the batched probe. On a CPU every masked copy computes in full, so a batched unit's cost per mask hardly
# depends on how many it holds: a few measure it, and a probe of all ``batch_masks`` (64 by default) would retrain
# most of a small study on the slower path before the choice is made. GPUs, where batching amortises, never probe.
PROBE_MASKS = 4


def make_units(config: StudyConfig, pending: list[Trial], batched: bool) -> list[Unit]:
    """One unit per trial, or chunks of ``batch_masks`` trials sharing a repeat (one data order) when batched."""
    if not batched:
        return [([trial], False) for trial in pending]
    by_repeat: dict[int, list[Trial]] = {}
    for trial in pending:
        by_repeat.setdefault(trial.repeat, []).append(trial)
    size = config.batch_masks
    return [(group[i : i + size], True) for group in by_repeat.values() for i in range(0, len(group), size)]


def use_batched_path(config: StudyConfig, pending: list[Trial]) -> bool | None:
    """Whether to retrain batched: never with ``off`` or for a network that cannot be batched (``validate``
    refuses ``on`` for one); always with ``on``, and with ``auto`` on a GPU; None when it is to be measured (``auto``
    on a CPU with at least three pending trials)."""
    if config.batching == "off" or config.module is not None:  # a configured module retrains one at a time
        return False
    if not supports_batching(build_model(config.model, **structural_kwargs(config.model_kwargs))):
        return False
    if config.batching == "on" or visible_gpus(config):
        return True
    return None if len(pending) >= 3 else False


def _seconds_per_trial(config: StudyConfig, trials: list[Trial]) -> float:
    """Mean ``seconds`` of the records just written (a batched record holds its share of the unit's time)."""
    paths = [trial_path(Path(config.study_dir), trial.trial_id) for trial in trials]
    return sum(json.loads(path.read_text())["seconds"] for path in paths) / len(paths)


def run_pending(config: StudyConfig, pending: list[Trial], on_done: OnDone) -> None:
    """Retrain every pending trial on the chosen (or measured) path; each writes its own record."""
    batched = use_batched_path(config, pending)
    if batched is not None:
        execute(config, make_units(config, pending, batched), on_done)
        return
    single, rest = pending[:1], pending[1:]
    repeat = rest[0].repeat
    probe = [trial for trial in rest if trial.repeat == repeat][: min(config.batch_masks, PROBE_MASKS)]
    execute(config, [(single, False), (probe, True)], on_done)
    one_at_a_time, per_batched = _seconds_per_trial(config, single), _seconds_per_trial(config, probe)
    faster = per_batched < one_at_a_time
    rank_zero_info(
        f"Retraining took {one_at_a_time:.2f} s per trial one at a time, {per_batched:.2f} s per trial batched "
        f"({len(probe)} masks); the other {len(rest) - len(probe)} trials are retrained "
        f"{'batched' if faster else 'one at a time'}."
    )
    remaining = [trial for trial in rest if trial not in probe]
    if remaining:
        execute(config, make_units(config, remaining, faster), on_done)
