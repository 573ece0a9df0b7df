"""Mask mode: zero whole dependency groups and keep them at zero through training.

`parameter_masks` is the public entry point (also used by the study's batched multi-mask trainer): for a network and
`{layer: pruned unit indices}` it returns the 0/1 mask of every parameter the pruned units touch — the filter's
weights and bias, the BatchNorm affine entries, the next layers' input slices, residual partners — exactly the
entries physical pruning would remove.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_prune.pruning.structure import PruningStructure


def parameter_masks(
    network: nn.Module, indices: dict[str, list[int]], example_input: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-parameter 0/1 masks (1 = kept) that remove the given units' whole dependency groups.

    Args:
        network: The (unpruned) network.
        indices: `{layer name: pruned unit indices}`; names are module names relative to `network`.
        example_input: An input batch the network accepts, e.g. `[1, 1, 32, 32]`.

    Returns:
        `{parameter name: mask}` for the touched parameters, each shaped and placed like its parameter.

    Raises:
        ValueError: If `indices` names an unknown layer or holds invalid indices (see
            `PruningStructure.check_indices`).
    """
    structure = PruningStructure(network, example_input)
    return structure.parameter_masks(structure.check_indices(indices))


@torch.no_grad()
def apply_masks(network: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Multiply, in place, each parameter named in `masks` by its mask."""
    parameters = dict(network.named_parameters())
    for name, mask in masks.items():
        parameters[name].mul_(mask.to(parameters[name].device))


class MaskGuard:
    """Keeps masked entries at zero while a network trains.

    Gradient hooks zero the masked entries' gradients, so plain SGD (momentum, weight decay) and Adam(W) never move
    them; `reapply()` after each optimizer step also covers optimizers that update parameters without gradients.

    Args:
        network: The network whose parameters are masked (masks are applied at construction).
        masks: `{parameter name: 0/1 mask}`.
    """

    def __init__(self, network: nn.Module, masks: dict[str, torch.Tensor]) -> None:
        self.network = network
        self.masks = masks
        apply_masks(network, masks)
        parameters = dict(network.named_parameters())
        self._handles: list[RemovableHandle] = [
            parameters[name].register_hook(lambda grad, mask=mask: grad * mask.to(grad.device))
            for name, mask in masks.items()
        ]

    def reapply(self) -> None:
        """Zero the masked entries again."""
        apply_masks(self.network, self.masks)

    def remove(self) -> None:
        """Remove the gradient hooks (the parameters stay as they are)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
