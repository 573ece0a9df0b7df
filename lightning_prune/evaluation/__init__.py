"""Evaluation through lmms-eval (the optional `lmms` extra): the harness's `lightning_prune` model and a tiny task.

`manifest` registers the model with lmms-eval through the `lmms_eval.models` entry point and imports nothing heavy;
`lmms_model` (the only module importing lmms-eval) holds the model class. Nothing else in the package imports this
package.
"""
