"""Causal-LM loss and its evaluation over a loader: what `taylor`, `oracle` and `pruned/*` read for language models.

Batches are `(input_ids [B, T], labels [B, T])` with `-100` at positions that carry no loss (padding, prompts).
As in transformers, the logits at position `t` predict label `t + 1`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune.pruning.inputs import call_network, to_device
from lightning_prune.pruning.modes import modes_restored

IGNORE_INDEX = -100


def _logits(outputs) -> torch.Tensor:
    return outputs.logits if hasattr(outputs, "logits") else outputs


def causal_lm_loss(outputs, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy of a model output (or logits `[B, T, V]`) against `labels` `[B, T]`.

    Args:
        outputs: A transformers output with `.logits`, or the logits tensor.
        labels: Token ids, `-100` where no loss is taken.
        reduction: `"mean"` over predicted tokens or `"sum"`.

    Returns:
        Scalar loss (float32).
    """
    logits = _logits(outputs)[..., :-1, :].float()
    targets = labels[..., 1:].to(logits.device)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX,
                           reduction=reduction)


def predicted_tokens(labels: torch.Tensor) -> int:
    """Number of positions that carry a next-token loss in `labels` `[B, T]`."""
    return int((labels[..., 1:] != IGNORE_INDEX).sum())


def evaluate_causal_lm(
    network: nn.Module, batches: Iterable, device: torch.device | str | None = None
) -> tuple[float, float]:
    """Mean next-token loss and next-token accuracy over every `(input_ids, labels)` batch, eval mode, no grad.

    The mean is over predicted tokens (not over batches); train/eval flags are restored afterwards.

    Returns:
        `(loss, accuracy)`; `(nan, nan)` when no token is predicted.
    """
    loss_sum, correct, count = 0.0, 0, 0
    with modes_restored(network):
        with torch.no_grad():
            for batch in batches:
                inputs, labels = to_device(batch[0], device), to_device(batch[1], device)
                logits = _logits(call_network(network, inputs))
                loss_sum += float(causal_lm_loss(logits, labels, reduction="sum"))
                targets = labels[..., 1:]
                scored = targets != IGNORE_INDEX
                correct += int(((logits[..., :-1, :].argmax(-1) == targets) & scored).sum())
                count += int(scored.sum())
    if count == 0:
        return float("nan"), float("nan")
    return loss_sum / count, correct / count


def answer_losses(outputs, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token loss of each sequence's labelled tokens: `[B]` (minus its answer log-likelihood)."""
    logits = _logits(outputs)[..., :-1, :].float()
    targets = labels[..., 1:].to(logits.device)
    per_token = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
    return per_token.sum(dim=-1)


def answer_matches(outputs, labels: torch.Tensor) -> torch.Tensor:
    """`[B]` bool: every labelled token of the sequence is the argmax next-token prediction (teacher-forced)."""
    logits = _logits(outputs)[..., :-1, :]
    targets = labels[..., 1:].to(logits.device)
    scored = targets != IGNORE_INDEX
    return ((logits.argmax(-1) == targets) | ~scored).all(dim=-1) & scored.any(dim=-1)


def multiple_choice_accuracy(
    losses: torch.Tensor, question: torch.Tensor, option: torch.Tensor, gold: torch.Tensor
) -> float:
    """Share of questions whose lowest-loss option is the gold one (ties: the earlier option).

    Args:
        losses: `[N]` answer losses (`answer_losses`), one per (question, option) item.
        question: `[N]` question index of each item.
        option: `[N]` option index (-1: not a multiple-choice item, ignored).
        gold: `[N]` 1 where the option is the question's answer.

    Returns:
        The accuracy, or nan without multiple-choice items.
    """
    best: dict[int, tuple[float, int, int]] = {}
    for loss, q, o, g in zip(losses.tolist(), question.tolist(), option.tolist(), gold.tolist(), strict=True):
        if o < 0:
            continue
        if q not in best or (loss, o) < best[q][:2]:
            best[q] = (loss, o, g)
    return sum(g for _, _, g in best.values()) / len(best) if best else float("nan")
