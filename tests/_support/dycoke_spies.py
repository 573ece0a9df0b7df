"""A spy on DyCoke's decode-step attention, shared by the hook tests of every family."""

from __future__ import annotations

import lightning_prune.dycoke.attention as dycoke_attention
from lightning_prune.dycoke.kv_pruning import DecodePruning


def spy_decode_attention(monkeypatch) -> tuple[list[tuple], dict]:
    """Record DyCoke's decode steps for the rest of the test; the real functions still run.

    Returns:
        `(calls, full_keys)`: `calls` gets `(layer_idx, query, key, mask)` of every attention call with one query
        token (a decode step), the key cloned since pruned keys are views of a buffer that moves on; `full_keys`
        maps `(layer, length)` to the unpruned key `DecodePruning.prune` received.
    """
    calls, full_keys = [], {}
    real_sdpa, real_prune = dycoke_attention.sdpa_attention_forward, DecodePruning.prune

    def spy(module, query, key, value, mask, **kwargs):
        if query.shape[2] == 1:
            calls.append((module.layer_idx, query, key.clone(), mask))
        return real_sdpa(module, query, key, value, mask, **kwargs)

    def recording_prune(self, layer, key, value, mask):
        full_keys[(layer, key.shape[2])] = key
        return real_prune(self, layer, key, value, mask)

    monkeypatch.setattr(dycoke_attention, "sdpa_attention_forward", spy)
    monkeypatch.setattr(DecodePruning, "prune", recording_prune)
    return calls, full_keys
