"""Every torchvision classifier of the list prunes 25% of every prunable layer, physically and masked.

Random weights (nothing is downloaded), 10 classes, the smallest input each network accepts. One model per
parametrization: masked in place (the masked entries are exactly the removed ones, test_structure.py), run, then
pruned physically. The last layer is re-drawn so that the outputs are not constant (ViT starts with a zero head),
which would make "masked equals physical" vacuous.
"""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from lightning_prune.pruning import PruningStructure, apply_masks, l1_scores, lowest_units

# name -> (input size, extra builder arguments, layer patterns). ViT: heads and MLP (its embedding dimension, which
# excludes the heads of the same attention, is covered in test_real_models.py).
CLASSIFIERS = {
    "resnet18": (32, {}, {"*": 0.25}),
    "resnet50": (32, {}, {"*": 0.25}),
    "resnext50_32x4d": (32, {}, {"*": 0.25}),
    "wide_resnet50_2": (32, {}, {"*": 0.25}),
    "mobilenet_v2": (32, {}, {"*": 0.25}),
    "mobilenet_v3_small": (32, {}, {"*": 0.25}),
    "efficientnet_b0": (32, {}, {"*": 0.25}),
    "efficientnet_v2_s": (32, {}, {"*": 0.25}),
    "densenet121": (32, {}, {"*": 0.25}),
    "regnet_y_400mf": (32, {}, {"*": 0.25}),
    "shufflenet_v2_x0_5": (32, {}, {"*": 0.25}),
    "squeezenet1_0": (48, {}, {"*": 0.25}),
    "googlenet": (32, {"aux_logits": False, "init_weights": False}, {"*": 0.25}),
    "mnasnet0_5": (32, {}, {"*": 0.25}),
    "vgg11_bn": (32, {}, {"*": 0.25}),
    "alexnet": (64, {}, {"*": 0.25}),
    "convnext_tiny": (32, {}, {"*": 0.25}),
    "vit_b_16": (32, {"image_size": 32}, {"*self_attention": 0.25, "*mlp.0": 0.25}),
    "swin_t": (32, {}, {"*": 0.25}),
}
# Layers refused, with the reason the warning gives; every other conv/linear but the classifier is prunable.
REFUSED = {"shufflenet_v2_x0_5": "channel shuffle", "swin_t": "PatchMerging"}
# LayerNorm over the pruned channels: masks are not exactly removal.
INEXACT = {"convnext_tiny"}


def _build(name: str) -> tuple[nn.Module, torch.Tensor]:
    size, kwargs, _ = CLASSIFIERS[name]
    torch.manual_seed(0)
    network = torchvision.models.get_model(name, num_classes=10, **kwargs)
    last = [m for m in network.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    nn.init.normal_(last.weight, std=0.05)
    return network.eval(), torch.randn(2, 3, size, size)


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_classifier_prunes_a_quarter_of_every_prunable_layer(name):
    network, images = _build(name)
    before = sum(p.numel() for p in network.parameters())
    structure = PruningStructure(network, images[:1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ratios = structure.select(CLASSIFIERS[name][2])
    skipped = [str(w.message) for w in caught if "cannot be pruned" in str(w.message)]
    if name in REFUSED:
        assert len(skipped) == 1 and REFUSED[name] in skipped[0] and structure.refused
        assert all(layer in skipped[0] for layer in structure.refused)
    else:
        assert not skipped and not structure.refused
    counts = structure.pruned_counts(ratios)
    for layer, count in counts.items():
        units = structure.layers[layer].units
        assert count == math.floor(0.25 * units + 1e-9)
    indices = lowest_units(l1_scores(structure, list(counts)), counts)
    exact = all(structure.mask_is_exact(layer) for layer in indices)
    assert exact == (name not in INEXACT)

    with torch.no_grad():  # the masked entries are those that pruning removes (test_structure.py): mask in place
        apply_masks(network, structure.parameter_masks(indices))
        expected = network(images)
    structure.prune(indices)
    with torch.no_grad():
        out = network(images)
    assert out.shape == (2, 10)
    assert sum(p.numel() for p in network.parameters()) < 0.95 * before
    if exact:
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-3)
    else:
        assert not torch.allclose(out, expected, atol=1e-4)

    network.train()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01)
    loss = F.cross_entropy(network(images), torch.tensor([1, 7]))
    loss.backward()
    grads = [p.grad for p in network.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
    snapshot = [p.detach().clone() for p in network.parameters()]
    optimizer.step()
    assert any(not torch.equal(old, p) for old, p in zip(snapshot, network.parameters(), strict=True))
