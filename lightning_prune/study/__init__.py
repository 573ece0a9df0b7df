"""The oracle-pruning correlation study: many pruned models from one pretrained model, pre- vs post-retrain.

`lightning-prune study --config configs/study/<name>.yaml`, or from Python::

    from lightning_prune.study import StudyConfig, run_study
    summary = run_study(StudyConfig(...))

Modules, along the pipeline: `spec` (what a study is: the config dataclasses, the fingerprint, the trial and its
record), `validation` (every config-only check, before compute), `prepare` (``study.json``, the pretrained weights,
the masks enumerated or sampled, the trial list), `run` (what the fits are made of, the one-at-a-time and batched
paths through the Lightning Trainer, `run_unit` that every executor calls), `executors` (this process, local
processes, Ray, by a registry; one at a time or batched, measured), `report` (results.csv, summary.json, figures,
W&B runs), `runner` (`run_study`, and the ``lightning-prune study`` command line).
"""

from lightning_prune._lazy import lazy_getattr

_LAZY = {
    "StudyConfig": "lightning_prune.study.spec",
    "MaskConfig": "lightning_prune.study.spec",
    "RecipeConfig": "lightning_prune.study.spec",
    "run_study": "lightning_prune.study.runner",
}

__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
