"""Install a token-compression method on a video LLM through transformers' public extension points, and remove it.

`CompressionHooks` is what every method except DyCoke runs on (DyCoke keeps its own `DyCokeHooks`, whose behaviour
this package does not change). Pieces, no model file forked, the family's specifics behind the `FamilyAdapter`:

1. A forward pre-hook on the family's base model. At the prefill it asks the method's `select_visual` which video
   tokens enter the LLM, puts the selected (or replaced) features back through the adapter, drops the other video
   placeholders from `input_ids` / `attention_mask` / `mm_token_type_ids` and lets the adapter assign positions (kept
   tokens keep their multimodal RoPE ids; DeepStack features are gathered with them). At each decode step it maps
   `generate`'s bookkeeping (which still counts the dropped tokens) onto the shorter prompt.
2. Forward pre-hooks on the LLM's decoder layers (when the method lists `cut_layers`). At the prefill, before a cut
   layer, the method's `cut_layer` picks the tokens that this layer and the later ones keep: their hidden states,
   the mask rows and columns, the RoPE cos/sin and position ids are gathered, so those layers compute (and cache)
   only the kept tokens, with their original positions. At a decode step these layers get the mask columns of their
   own (shorter) cache. A cut with `earlier_cache` also hides the dropped tokens from the earlier layers at every
   decode step: their cache entries are masked out, not freed (layer 0's cache length is what `generate`'s position
   bookkeeping reads, so it stays whole).
3. When the method reads attention (`attention_layers`, `decode_pruning`), the text model's attention is switched to
   `compression_sdpa` / `compression_eager` (`attention.py`): the last prompt token's attention row is computed
   alone in the listed layers, and a `DecodePruning` selects cache entries at each decode step.

`remove()` undoes all; the model then behaves exactly as before.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lightning_prune.compression.attention import TAP_ATTRIBUTE, WRAPPED_IMPLEMENTATIONS, register_attention_functions
from lightning_prune.compression.contexts import ONE_SAMPLE_ATTRIBUTE, LayerContext, LayerCut, VisualContext
from lightning_prune.compression.sequence import decoder_layers, gather_sequence
from lightning_prune.dycoke.families import family_of, get_family
from lightning_prune.dycoke.hooks import GenerationStats
from lightning_prune.dycoke.kv_pruning import gather_positions, last_query_attention


@dataclass
class CompressionStats(GenerationStats):
    """`GenerationStats` plus where the visual tokens went: `visual_tokens_after` is what the last LLM layer keeps;
    `visual_tokens_into_llm` what entered it; `layer_visual_tokens` the count from each cut layer on."""

    visual_tokens_into_llm: int = 0
    layer_visual_tokens: dict[int, int] = field(default_factory=dict)


@dataclass
class _Prefill:
    removed: int  # prompt tokens dropped before the LLM
    original_length: int
    kept_columns: torch.Tensor | None  # [B, S'] columns of the original prompt kept (None: all, same order)
    visual_mask: torch.Tensor  # [B, S'] of the prompt the LLM receives
    visual_index: torch.Tensor  # [B, S'] index in the video run, -1 for text
    positions: torch.Tensor  # [B, n] current tokens' positions in the LLM's prompt (n shrinks with each cut)
    tokens_per_frame: int
    num_frames: int
    rows: dict[int, torch.Tensor] = field(default_factory=dict)
    version: int = 0
    sliced: dict[tuple[int, int], object] = field(default_factory=dict)


class CompressionHooks:
    """One compression method on one video LLM; `install()` / `remove()` or use it as a context manager.

    Args:
        model: a module containing a supported family's base model.
        method: the method and its settings.
        family: the family's registry name; None finds it from the model's classes.
        profile: accepted for symmetry with `DyCokeHooks` (the decode-pruning state then times its own work).
    """

    # `method` is a `compression.base.CompressionMethod`; typed loosely because that module imports this one.
    def __init__(self, model: nn.Module, method: Any, family: str | None = None, profile: bool = False):
        method.validate()
        self.method = method
        if family is None:
            self.family, self.base = family_of(model)
        else:
            self.family = get_family(family)
            self.base = self.family.find_base(model)
            if self.base is None:
                raise TypeError(f"`family` {family!r} does not match the model: no "
                                f"{self.family.base_class.partition(':')[2]} inside {type(model).__name__}.")
        self.num_layers = self.base.config.text_config.num_hidden_layers
        method.check_model(self.base, self.family, self.num_layers)
        self.attention_layers = tuple(method.attention_layers(self.num_layers))
        self.cut_layers = tuple(sorted(method.cut_layers(self.num_layers)))
        self.pruning = method.decode_pruning()
        if self.pruning is not None:
            self.pruning.profile = profile
        self._check_layers()
        self._uses_attention = bool(self.attention_layers) or self.pruning is not None
        self._original_attention = self._text_attention()
        self.video_token_id = self.family.video_token_id(self.base)
        self.stats: list[CompressionStats] = []
        self._forward_parameters = inspect.signature(self.base.forward)
        self._handles: list = []
        self._prefill: _Prefill | None = None
        self._current: CompressionStats | None = None
        self._layer_positions: dict[int, torch.Tensor] = {}
        self._probe = None

    @property
    def layer_positions(self) -> dict[int, torch.Tensor]:
        """After a prefill with cuts: per layer from the first cut on, the `[B, n]` prompt positions it kept."""
        return dict(self._layer_positions)

    def _check_layers(self) -> None:
        for name, layers in (("attention layer", self.attention_layers), ("cut layer", self.cut_layers)):
            bad = [layer for layer in layers if not 0 <= layer < self.num_layers]
            if bad:
                raise ValueError(f"{self.method.name}'s {name}s must be in [0, {self.num_layers - 1}] (the LLM has "
                                 f"{self.num_layers} layers), got {bad}.")
        if self.pruning is not None and self.cut_layers:
            raise ValueError(f"{self.method.name} combines prefill layer cuts with decode-time cache selection; "
                             "CompressionHooks supports one or the other.")
        deepstack = len(getattr(self.base.config.vision_config, "deepstack_visual_indexes", None) or ())
        if self.cut_layers and self.cut_layers[0] < deepstack:
            raise ValueError(f"{self.method.name} cuts tokens before LLM layer {self.cut_layers[0]}, but this model "
                             f"adds DeepStack features after layers 0 to {deepstack - 1}: the cut layer must be "
                             f">= {deepstack}.")

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    def install(self) -> CompressionHooks:
        if self.installed:
            raise RuntimeError(f"{self.method.name} is already installed on this model.")
        layers = decoder_layers(self.base)
        if self._uses_attention:
            self._original_attention = self._text_attention()
            register_attention_functions()
            self.base.set_attn_implementation({"text_config": WRAPPED_IMPLEMENTATIONS[self._original_attention]})
            tapped = set(self.attention_layers)
            if self.pruning is not None:
                tapped |= set(range(self.pruning.prune_layer - 1, self.num_layers))
            for index in tapped:
                setattr(layers[index].self_attn, TAP_ATTRIBUTE, self._tap)
        self._handles = [self.base.register_forward_pre_hook(self._before_forward, with_kwargs=True)]
        if self.cut_layers:
            # Every layer, not only from the first cut on: a cut may also shorten the earlier layers' cache
            # (`LayerCut.earlier_cache`), whose decode masks must then be sliced too.
            for index in range(self.num_layers):
                self._handles.append(layers[index].register_forward_pre_hook(self._before_layer(index),
                                                                             with_kwargs=True))
        self._handles += self.family.attach(self.base)
        if self.method.one_sample:
            setattr(self.base, ONE_SAMPLE_ATTRIBUTE, True)
        self._probe = self.method.vision_probe(self.base, self.family)
        if self._probe is not None:
            self._handles += self._probe.attach()
        return self

    def remove(self) -> None:
        if self._handles:
            for handle in self._handles:
                handle.remove()
            self._handles = []
            if self._uses_attention:
                for layer in decoder_layers(self.base):
                    if hasattr(layer.self_attn, TAP_ATTRIBUTE):
                        delattr(layer.self_attn, TAP_ATTRIBUTE)
                self.base.set_attn_implementation({"text_config": self._original_attention})
            if hasattr(self.base, ONE_SAMPLE_ATTRIBUTE):
                delattr(self.base, ONE_SAMPLE_ATTRIBUTE)
        self._finish_generation()

    def __enter__(self) -> CompressionHooks:
        return self.install()

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def _text_attention(self) -> str:
        implementation = self.base.config.text_config._attn_implementation
        if self._uses_attention and implementation not in WRAPPED_IMPLEMENTATIONS:
            raise ValueError(
                f"{self.method.name} reads attention weights and supports the text model's attention implementation "
                f"{sorted(WRAPPED_IMPLEMENTATIONS)}, got {implementation!r} (flash attention returns no attention "
                "weights). Load the model with `attn_implementation='sdpa'`."
            )
        return implementation

    def pop_stats(self) -> list[CompressionStats]:
        """Statistics of the generations since the last call (oldest first)."""
        self._sync_current()
        stats, self.stats = self.stats, []
        return stats

    def _sync_current(self) -> None:
        if self._current is not None and self.pruning is not None and self.pruning.attended_lengths:
            self._current.attended_kv_lengths = [round(n) for n in self.pruning.attended_lengths]
            self._current.reused_steps = self.pruning.reused_steps
            self._current.overhead_s = self.pruning.overhead_s

    def _finish_generation(self) -> None:
        self._sync_current()
        if self.pruning is not None:
            self.pruning.reset()
        self._prefill = self._current = None
        self._layer_positions = {}

    # The base model's forward.

    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            kwargs = dict(self._forward_parameters.bind_partial(*args, **kwargs).arguments)
            kwargs.update(kwargs.pop("kwargs", {}))
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if cache is not None else 0
        if past == 0:
            self._finish_generation()
            self._start(module, kwargs)
        elif self._prefill is not None:
            self._decode(kwargs, past)
        return (), kwargs

    def _start(self, module: nn.Module, kwargs: dict) -> None:
        has_video = (kwargs.get("mm_encoder_outputs") or {}).get(self.family.encoder_key) is not None
        if not has_video and kwargs.get(self.family.pixel_key) is None:
            return
        input_ids = kwargs.get("input_ids")
        if input_ids is None:
            raise ValueError(f"{self.method.name} needs `input_ids` (with the video placeholder tokens), "
                             "got `inputs_embeds`.")
        video = self.family.encode_video(module, kwargs)
        batch, video_length = input_ids.shape[0], video.length
        is_video = input_ids == self.video_token_id
        if len(video.frames) != batch or not bool((is_video.sum(dim=1) == video_length).all()):
            raise ValueError(f"Every prompt must hold {video_length} video tokens (one video per sample), "
                             f"got {is_video.sum(dim=1).tolist()}.")
        if any(frames.shape[:2] != video.frames[0].shape[:2] for frames in video.frames):
            raise ValueError("Every video in a batch must have the same frames and tokens per frame, got (F, N) = "
                             f"{[tuple(frames.shape[:2]) for frames in video.frames]}.")
        generator = torch.Generator().manual_seed(int(self.method.settings().get("seed", 0)))
        selection = self.method.select_visual(video, VisualContext(module, self.family, kwargs, generator,
                                                                          self._probe))
        device = input_ids.device
        everything = torch.arange(video_length, device=device)
        kept = [everything] * batch if selection is None else [index.to(device) for index in selection.kept]
        self._check_kept(kept, video_length, batch)
        output = self.family.select(video, kept)
        if selection is not None and selection.features is not None:
            output = _with_features(output, selection.features)
        kwargs["mm_encoder_outputs"] = {**(kwargs.get("mm_encoder_outputs") or {}), self.family.encoder_key: output}
        kwargs[self.family.pixel_key] = None
        original_length = input_ids.shape[1]
        video_columns = is_video.nonzero()[:, 1].view(batch, video_length)
        kept_index = torch.stack(kept)
        columns = None
        if not all(torch.equal(index, everything) for index in kept):
            kept_video = video_columns.gather(1, kept_index)
            keep = ~is_video
            keep.scatter_(1, kept_video, True)
            columns = keep.nonzero()[:, 1].view(batch, -1)
            sources = columns.clone()  # the i-th video slot left holds the i-th kept token: where it came from
            sources[is_video.gather(1, columns)] = kept_video.flatten()
            self._shorten_prompt(module, kwargs, dict(kwargs), columns, sources, original_length - columns.shape[1])
        prompt = kwargs["input_ids"]
        visual_mask = prompt == self.video_token_id
        visual_index = torch.full_like(prompt, -1)
        visual_index[visual_mask] = kept_index.flatten()
        positions = torch.arange(prompt.shape[1], device=device).expand(batch, -1)
        self._prefill = _Prefill(original_length - prompt.shape[1], original_length, columns, visual_mask,
                                 visual_index, positions, video.tokens_per_frame, video.num_frames)
        if self.pruning is not None:
            self.pruning.start(visual_mask.nonzero()[:, 1].view(batch, -1), prompt.shape[1])
        self._current = CompressionStats(
            batch_size=batch, visual_tokens_before=video_length, visual_tokens_after=len(kept[0]),
            prompt_tokens_before=original_length, prompt_tokens_after=prompt.shape[1],
            visual_tokens_into_llm=len(kept[0]),
        )
        self.stats.append(self._current)

    def _check_kept(self, kept: list[torch.Tensor], video_length: int, batch: int) -> None:
        if len(kept) != batch or len({len(index) for index in kept}) != 1:
            raise ValueError(f"{self.method.name} must keep the same number of video tokens in each of the {batch} "
                             f"samples, got {[len(index) for index in kept]}.")
        for index in kept:
            if len(index) == 0 or int(index.min()) < 0 or int(index.max()) >= video_length or \
                    len(index.unique()) != len(index):
                raise ValueError(f"{self.method.name} must keep distinct video token indices in [0, {video_length}), "
                                 f"got {index.tolist()}.")

    def _shorten_prompt(self, module, kwargs, original, columns, sources, removed) -> None:
        kwargs["input_ids"] = kwargs["input_ids"].gather(1, columns)
        if kwargs.get("mm_token_type_ids") is not None:
            kwargs["mm_token_type_ids"] = kwargs["mm_token_type_ids"].gather(1, columns)
        mask = kwargs.get("attention_mask")
        if mask is not None:
            if not (isinstance(mask, torch.Tensor) and mask.dim() == 2):
                raise ValueError(f"{self.method.name} needs a 2-D `attention_mask` [batch, sequence] (or none).")
            kwargs["attention_mask"] = mask.gather(1, columns)
        self.family.merged_positions(module, kwargs, original, sources, removed,
                                     renumber=self.method.position_rule == "published")

    def _decode(self, kwargs: dict, past: int) -> None:
        tokens = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        if tokens is not None and tokens.shape[1] != 1:
            raise ValueError(f"{self.method.name} decodes one token per step, got {tokens.shape[1]} tokens after "
                             f"{past} cached (assisted or chunked generation is not supported).")
        prefill = self._prefill
        if prefill.kept_columns is not None:
            self.family.decode_positions(kwargs, prefill.removed, past,
                                         renumber=self.method.position_rule == "published")
            mask = kwargs.get("attention_mask")
            if mask is not None:
                first = self._layer_positions.get(0)  # layer 0's cache sets `past`; a cut may have shortened it
                cut = 0 if first is None else prefill.visual_mask.shape[1] - first.shape[1]
                expected = past + 1 + prefill.removed + cut
                if mask.dim() != 2 or mask.shape[1] != expected:
                    raise ValueError(f"Expected a 2-D decode `attention_mask` over {expected} "
                                     f"tokens, got shape {tuple(mask.shape)}.")
                length = prefill.original_length
                kwargs["attention_mask"] = torch.cat([mask[:, :length].gather(1, prefill.kept_columns),
                                                      mask[:, length:]], dim=1)
        first = self._layer_positions.get(0)  # `past` counts layer 0's cache, which a cut may have shortened
        prompt = prefill.visual_mask.shape[1]
        shortened = 0 if first is None else prompt - first.shape[1]
        self._current.full_kv_lengths.append(past + 1 + shortened)
        if self.pruning is None:
            last = self._layer_positions.get(self.num_layers - 1)
            cut = 0 if last is None else prompt - last.shape[1]
            self._current.attended_kv_lengths.append(past + 1 + shortened - cut)

    # The decoder layers (from the first cut layer on).

    def _before_layer(self, index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            prefill = self._prefill
            if prefill is None:
                return args, kwargs
            hidden = args[0] if args else kwargs["hidden_states"]
            if hidden.shape[1] > 1:
                if index in self.cut_layers:
                    hidden = self._cut(index, module, hidden, kwargs)
                if index >= self.cut_layers[0]:
                    self._slice_prefill(kwargs, prefill)
                    self._layer_positions[index] = prefill.positions
            elif index in self._layer_positions:
                self._slice_decode(kwargs, self._layer_positions[index])
            return ((hidden, *args[1:]) if args else ()), (kwargs if args else {**kwargs, "hidden_states": hidden})

        return hook

    def _cut(self, index: int, module: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        prefill = self._prefill
        positions = prefill.positions
        context = LayerContext(
            layer=index, module=module, hidden_states=hidden, attention=prefill.rows.get(index - 1),
            visual_mask=prefill.visual_mask.gather(1, positions),
            visual_index=prefill.visual_index.gather(1, positions),
            positions=positions, tokens_per_frame=prefill.tokens_per_frame, num_frames=prefill.num_frames,
        )
        cut: LayerCut | None = self.method.cut_layer(context)
        if cut is None:
            return hidden
        keep = cut.keep.to(hidden.device)
        if keep.dim() != 2 or keep.shape[0] != hidden.shape[0] or keep.shape[1] > hidden.shape[1]:
            raise ValueError(f"{self.method.name}'s cut must be [batch, kept] indices into the {hidden.shape[1]} "
                             f"tokens, got shape {tuple(keep.shape)}.")
        if cut.hidden_states is not None:
            hidden = cut.hidden_states
        prefill.positions = positions.gather(1, keep)
        prefill.version += 1
        if cut.earlier_cache:
            self._cut_earlier_caches(index, kwargs, prefill.positions)
        visual = int(prefill.visual_mask.gather(1, prefill.positions)[0].sum())
        self._current.layer_visual_tokens[index] = visual
        self._current.visual_tokens_after = visual
        return gather_positions(hidden, keep, 1)

    def _cut_earlier_caches(self, index: int, kwargs: dict, kept: torch.Tensor) -> None:
        """The cache of the layers before `index` keeps only the prompt positions `kept` `[B, S']` (PruneVid)."""
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is None:
            raise ValueError(f"{self.method.name} cuts the cache of the layers before {index}, but the forward has "
                             "no cache (`use_cache=False`).")
        full = torch.arange(self._prefill.visual_mask.shape[1], device=kept.device).expand(kept.shape[0], -1)
        for layer in range(index):
            cached = self._layer_positions.get(layer, full)
            where = torch.searchsorted(cached.contiguous(), kept.contiguous())  # kept is a subset of what it holds
            entry = cache.layers[layer]
            entry.keys = gather_positions(entry.keys, where, 2)
            entry.values = gather_positions(entry.values, where, 2)
            self._layer_positions[layer] = kept

    def _slice_prefill(self, kwargs: dict, prefill: _Prefill) -> None:
        """Mask, RoPE cos/sin and position ids of the kept tokens (gathered from the full ones every layer gets)."""
        positions = prefill.positions
        if positions.shape[1] == prefill.visual_mask.shape[1]:
            return
        for name in ("attention_mask", "position_embeddings", "position_ids"):
            value = kwargs.get(name)
            if value is None:
                continue
            key = (id(value), prefill.version)
            if key not in prefill.sliced:
                prefill.sliced[key] = (value, gather_sequence(name, value, positions))
            kwargs[name] = prefill.sliced[key][1]

    def _slice_decode(self, kwargs: dict, positions: torch.Tensor) -> None:
        mask = kwargs.get("attention_mask")
        if not isinstance(mask, torch.Tensor):
            return
        prompt = self._prefill.visual_mask.shape[1]
        first = self._layer_positions.get(0)
        if first is not None and first.shape[1] < prompt:
            # Layer 0 was cut (FrameFusion merges before it): the model sized the mask by layer 0's cache, whose
            # prompt columns are layer 0's kept positions (every later layer keeps a subset of them).
            positions, prompt = torch.searchsorted(first, positions), first.shape[1]
        generated = torch.arange(prompt, mask.shape[-1], device=mask.device).expand(positions.shape[0], -1)
        index = torch.cat([positions, generated], dim=1)
        kwargs["attention_mask"] = gather_positions(mask.expand(index.shape[0], *mask.shape[1:]), index, 3)

    # The attention tap.

    def _tap(self, layer, query, key, value, attention_mask, scaling):
        if query.shape[2] > 1:
            if self._prefill is not None and layer in self.attention_layers:
                self._prefill.rows[layer] = last_query_attention(query, key, attention_mask, scaling)
            return key, value, attention_mask
        pruning = self.pruning
        if pruning is not None and pruning.active:
            if layer == pruning.prune_layer - 1:
                pruning.observe(query, key, attention_mask, scaling)
            elif layer >= pruning.prune_layer:
                return pruning.prune(layer, key, value, attention_mask)
        return key, value, attention_mask


def _with_features(output, features: list[torch.Tensor]):
    """The adapter's selected encoder output with the first features of each sample replaced (merged tokens)."""
    pooled = output.pooler_output
    if isinstance(pooled, torch.Tensor):
        pooled = pooled.clone()
        for sample, new in enumerate(features):
            pooled[sample, : len(new)] = new.to(pooled.dtype)
        output.pooler_output = pooled
    else:
        output.pooler_output = tuple(torch.cat([new.to(old.dtype), old[len(new):]])
                                     for old, new in zip(pooled, features, strict=True))
    return output
