"""What the pruning boundary measures: parameter and MAC counts, and loss/accuracy over a whole data loader."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from lightning_prune.pruning.inputs import first_example
from lightning_prune.pruning.modes import modes_restored


def count_params_and_macs(network: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """Parameters and multiply-accumulates of one forward pass on a single example (Torch-Pruning's counter).

    Args:
        network: The network (a deep copy is measured, the network itself is untouched).
        example_input: An input batch; only its first example is used.

    Returns:
        `(parameters, macs)`.
    """
    with torch.inference_mode(False), torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(network, first_example(example_input))
    return int(params), int(macs)


def evaluate_classifier(
    network: nn.Module, batches: Iterable, device: torch.device | str | None = None
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over every `(inputs, targets)` batch, network in eval mode, no gradients.

    The mean is over examples (not over batches). Train/eval flags are restored afterwards.

    Args:
        network: A classifier mapping inputs `[B, ...]` to logits `[B, C]`.
        batches: Iterable of `(inputs, targets)` (extra batch entries are ignored).
        device: Where to move the batches; None keeps them where they are.

    Returns:
        `(loss, accuracy)`; `(nan, nan)` for an empty iterable.
    """
    loss_sum, correct, count = 0.0, 0, 0
    with modes_restored(network):
        with torch.no_grad():
            for batch in batches:
                inputs, targets = batch[0], batch[1]
                if device is not None:
                    inputs, targets = inputs.to(device), targets.to(device)
                logits = network(inputs)
                loss_sum += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
                correct += int((logits.argmax(dim=-1) == targets).sum())
                count += len(targets)
    if count == 0:
        return float("nan"), float("nan")
    return loss_sum / count, correct / count
