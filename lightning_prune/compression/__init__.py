"""Token compression for video LLMs: one interface, several methods (DyCoke, FastV, floors, ...). No Lightning here.

A method is a frozen dataclass subclassing `CompressionMethod` (`base.py`): its fields are the published parameter
names with the published evaluation settings as defaults, `problems()` returns one "`arg` must be <rule>, got <value>."
message per bad value (raised at construction), `check_model()` raises when the model cannot take it (a layer beyond
the LLM's depth), and `at_budget(keep)` sets it to retain the share `keep` of the visual tokens (the benchmark).

How to add a method:

1. Write `lightning_prune/compression/<name>.py` with the maths as pure functions (tensors in, tensors out; tested
   against a re-implementation of the published code) and the dataclass. Implement one or more of the hooks, which
   `CompressionHooks` (`hooks.py`) calls; a method never reads family specifics, it gets tensors:
   - `select_visual(video, context) -> VisualSelection | None`: before the LLM, at the prefill. `video.frames` is per
     sample `[F, N, D]` (the projected visual tokens, frame by frame, raster order), `video.trailing` the tokens after
     the frames; return per sample the kept indices into the video run (and optionally `[M, D]` replacement features,
     for merged tokens). The prompt is shortened, kept tokens keep their positions (multimodal RoPE ids, DeepStack).
     A method that reads inside the vision tower (VisionZip) also returns a probe from `vision_probe(base, family)`
     (`vision_probes.py`: hooks on the tower, read back as `context.probe`).
   - `attention_layers(num_layers)` + `cut_layers(num_layers)` + `cut_layer(context) -> LayerCut | None`: inside the
     LLM, at the prefill, before each listed cut layer. `context` holds the layer's hidden states `[B, S, D]`, the
     last prompt token's head-mean attention `[B, S]` in the layer before (computed alone, when that layer is listed
     in `attention_layers`), the visual mask, each token's index in the video run and its prompt position; return
     the sorted `[B, S']` indices kept from this layer on (and optionally replacement hidden states, for merging;
     `earlier_cache=True` also hides the dropped tokens from the earlier layers' cache at decode, PruneVid-style).
     Those layers compute and cache only the kept tokens; decoding attends to them (the selection is fixed).
   - `decode_pruning() -> DecodePruning | None`: decode-time cache selection (`lightning_prune.dycoke.kv_pruning`):
     at each decode step, layer L - 1's attention picks the visual cache entries layers >= L attend to.
   Set `needs_attention = True` when the method reads attention weights (flash attention is then refused), and
   `needs_cls = True` when it needs a CLS token of the vision tower.
2. Add one line to `registry._METHODS`.
3. Add a thin callback in `lightning_prune/callbacks/compression.py` (a `CompressionCallback` subclass whose
   constructor takes the method's parameters) and its name to `lightning_prune.callbacks._LAZY`.

The lmms-eval bridge (`method=<name>` plus the method's parameters) and `benchmarks/compression.py` find methods in
the registry. A method needing its own installer (DyCoke) overrides `make_hooks`.
"""

from lightning_prune.compression.base import (
    CompressionMethod,
    LayerContext,
    LayerCut,
    VisualContext,
    VisualSelection,
)
from lightning_prune.compression.registry import METHOD_NAMES, get_method, method_class

__all__ = [
    "METHOD_NAMES",
    "CompressionMethod",
    "LayerContext",
    "LayerCut",
    "VisualContext",
    "VisualSelection",
    "get_method",
    "method_class",
]
