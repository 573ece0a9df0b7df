"""Evaluation: lmms-eval (the optional `lmms` extra) for video LLMs; lm-eval (the optional `lm` extra) and the
papers' perplexity for pruned causal LMs.

`manifest` registers the model with lmms-eval through the `lmms_eval.models` entry point and imports nothing heavy;
`lmms_model` (the only module importing lmms-eval) holds the model class. `lm_harness` is the only module importing
lm-eval (lazily, inside its functions); `perplexity` holds the LLM-Pruner and Wanda/SparseGPT conventions;
`callback.LmEvaluation` measures both before pruning, right after and after retraining. Nothing else in the package
imports this package.
"""

from lightning_prune._lazy import lazy_getattr

_LAZY = {
    "evaluate_lm": "lightning_prune.evaluation.lm_harness",
    "file_perplexity": "lightning_prune.evaluation.perplexity",
    "LmEvaluation": "lightning_prune.evaluation.callback",
}

__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
