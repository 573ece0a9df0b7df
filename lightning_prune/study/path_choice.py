"""Which path retrains the pending trials: one at a time, or many masks batched into one model.

With ``batching: auto`` on a CPU the choice is measured on the real path, not guessed: the first pending trial runs
one at a time and the next few (``PROBE_MASKS``, at most ``batch_masks``) of one repeat run batched, both through the
Trainer exactly as every other trial (their records are kept: the measurement costs no extra work), and the path
that took fewer seconds per trial retrains the rest.
"""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

from lightning_prune.study.executors import OnDone, Unit, execute, visible_gpus
from lightning_prune.study.spec import StudyConfig
from lightning_prune.study.trial import Trial, trial_path

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
    from lightning_prune.models import build_model
    from lightning_prune.modules.batched import supports_batching

    if config.batching == "off" or config.module is not None:  # a configured module retrains one at a time
        return False
    kwargs = {k: v for k, v in config.model_kwargs.items() if k != "weights"}  # the structure only: no download
    if not supports_batching(build_model(config.model, **kwargs)):
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
