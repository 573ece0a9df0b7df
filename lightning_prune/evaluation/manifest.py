"""lmms-eval's entry point for `lightning_prune` (group `lmms_eval.models`).

lmms-eval imports this whenever its model package loads, and one failing plugin hides every plugin: so this module
imports nothing (lmms-eval's own `ModelManifest` only when called, from within lmms-eval) and names the class by path.
"""

MODEL_ID = "lightning_prune"
CLASS_PATH = "lightning_prune.evaluation.lmms_model.LightningPruneVideoLLM"


def lmms_eval_models():
    """The manifest lmms-eval registers: `--model lightning_prune` resolves to `CLASS_PATH`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)
