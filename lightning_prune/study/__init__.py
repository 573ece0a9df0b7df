"""The oracle-pruning correlation study: many pruned models from one pretrained model, pre- vs post-retrain.

`lightning-prune study --config configs/study/<name>.yaml`, or from Python::

    from lightning_prune.study import StudyConfig, run_study
    summary = run_study(StudyConfig(...))

Modules: `spec` (what a study is, its fingerprint), `validation` (every config-only check, before compute), `masks`
(enumerate / sample), `prepare` (fingerprint, pretrained weights, masks), `trial` (one mask x repeat and its
record), `single_path` and `batched_path` (how trials run through the Lightning Trainer), `worker` (the unit every
executor runs), `building`, `weights`, `seeding`, `process_context`, `wandb_runs` (what the fits are made of),
`path_choice` (one at a time or batched, measured), `executors` (local processes, Ray, shards), `report`
(results.csv, summary.json, figures, W&B), `runner` (all of it), `cli`.
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
