"""FastV (Chen et al., ECCV 2024), as its KV-cache code does it (pkunlp-icler/FastV `src/FastV/lmms-eval/
fastv_kvcache.py`, and the FASTV_INPLACE branch of its `modeling_llama.py`).

At the prefill, layer `K - 1`'s attention row of the last prompt token, averaged over the heads, scores the visual
tokens; the top `int(N * ratio)` of the N visual tokens are kept (`ratio` is the kept share: the published code keeps
`topk(int(576 * ratio))`), re-sorted into their original order next to every text token. Layers `>= K` compute and
cache only those tokens, with their original position ids; layers `< K` keep everything. Decoding attends, in layers
`>= K`, to the kept tokens only: the selection is fixed for all decode steps.

Differences from the published code, none in the result: the attention row is computed alone (under SDPA too)
instead of running layer `K - 1` a second time with `output_attentions`; batches (left padding) are served, each sample
choosing its own tokens, and the video may sit anywhere in the prompt (the published code hard-codes 35 system tokens
and 576 image tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_prune.compression.base import CompressionMethod, LayerContext, LayerCut, check_fraction, int_problems


def fastv_keep_positions(last_row_attention: torch.Tensor, visual_mask: torch.Tensor,
                         keep_ratio: float) -> list[torch.Tensor]:
    """Per sample, the sorted sequence positions that layers `>= K` keep (text positions included).

    Args:
        last_row_attention: `[B, H, S]` attention probabilities of the last prompt token in layer `K - 1`, per head.
        visual_mask: `[B, S]` True at the visual tokens (padding and text False).
        keep_ratio: the kept share of the visual tokens, in [0, 1]: `int(N * keep_ratio)` of a sample's N are kept.

    Returns:
        One LongTensor per sample: every non-visual position and the top-scored visual ones, ascending.
    """
    if last_row_attention.dim() != 3 or last_row_attention.shape[::2] != visual_mask.shape:
        raise ValueError(f"`last_row_attention` must be [B, H, S] with [B, S] = visual_mask's "
                         f"{tuple(visual_mask.shape)}, got {tuple(last_row_attention.shape)}.")
    if not 0.0 <= keep_ratio <= 1.0:
        raise ValueError(f"`keep_ratio` must be in [0, 1], got {keep_ratio}.")
    scores = last_row_attention.float().mean(dim=1)  # [B, S], the mean over heads
    kept = []
    for sample_scores, is_visual in zip(scores, visual_mask, strict=True):
        visual = is_visual.nonzero()[:, 0]
        top = visual[sample_scores[visual].topk(int(len(visual) * keep_ratio)).indices]
        kept.append(torch.cat([(~is_visual).nonzero()[:, 0], top]).sort().values)
    return kept


@dataclass(frozen=True)
class FastVMethod(CompressionMethod):
    """FastV's settings, named as in the published KV-cache code.

    Attributes:
        K: the first LLM layer that sees only the kept visual tokens (`>= 1`; layer `K - 1` scores them).
        ratio: the kept share of the visual tokens, in (0, 1] (the published code keeps `int(576 * ratio)`; 1 keeps
            everything).
    The defaults are `fastv_kvcache.py`'s hard-coded `K = 3`, `ratio = 0.5`.
    """

    name = "fastv"
    needs_attention = True
    K: int = 3  # noqa: N815 (the published name)
    ratio: float = 0.5

    def problems(self) -> list[str]:
        return int_problems("K", self.K, 1) + check_fraction("ratio", self.ratio)

    def check_model(self, base, family, num_layers: int) -> None:
        if self.K >= num_layers:
            raise ValueError(f"`K` must be below the LLM's {num_layers} layers (1 to {num_layers - 1}), got {self.K}.")

    @classmethod
    def at_budget(cls, keep: float) -> FastVMethod:
        return cls(ratio=keep)

    def attention_layers(self, num_layers: int) -> tuple[int, ...]:
        return (self.K - 1,)

    def cut_layers(self, num_layers: int) -> tuple[int, ...]:
        return (self.K,)

    def cut_layer(self, context: LayerContext) -> LayerCut | None:
        if self.ratio >= 1.0:
            return None
        kept = fastv_keep_positions(context.attention[:, None, :], context.visual_mask, self.ratio)
        return LayerCut(torch.stack(kept))
