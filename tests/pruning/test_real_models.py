"""The study's real networks prune and still run: ResNet-56 (`*layer*.conv1` at 0.5) and ViT-B/16 (32x32 input).

ViT-B/16 is torchvision's VisionTransformer with ViT-B/16's widths (768 hidden, 12 heads of 64, MLP 3072) but 2 of
its 12 encoder layers, to keep the suite fast; the full `vit_b_16` takes the same code path.
"""

import torch
from torchvision.models import VisionTransformer

from lightning_prune.models import build_model
from lightning_prune.pruning import HeadPrunedAttention, PruningStructure, l1_scores, lowest_units


def _prune_by_l1(network, example, patterns):
    structure = PruningStructure(network, example)
    counts = structure.pruned_counts(structure.select(patterns))
    indices = lowest_units(l1_scores(structure, list(counts)), counts)
    structure.prune(indices)
    return indices


def test_resnet56_prunes_half_of_every_first_block_conv_and_runs():
    network = build_model("cifar_resnet56")
    before = sum(p.numel() for p in network.parameters())
    indices = _prune_by_l1(network, torch.zeros(1, 3, 32, 32), {"*layer*.conv1": 0.5})
    assert len(indices) == 27 and all(len(v) in (8, 16, 32) for v in indices.values())
    block = network.layer3[8]
    assert (block.conv1.out_channels, block.bn1.num_features, block.conv2.in_channels) == (32, 32, 32)
    assert network.layer1[0].conv2.out_channels == 16  # the residual width is untouched
    assert sum(p.numel() for p in network.parameters()) < 0.55 * before
    assert network(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def _vit_b16_two_layers() -> VisionTransformer:
    return VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=12, hidden_dim=768, mlp_dim=3072,
                             num_classes=10)


def test_vit_b16_prunes_attention_heads_and_mlp_channels_and_runs():
    network = _vit_b16_two_layers()
    _prune_by_l1(network, torch.zeros(1, 3, 32, 32), {"*self_attention": 0.5, "*mlp.0": 0.25})
    attention = network.encoder.layers.encoder_layer_1.self_attention
    assert isinstance(attention, HeadPrunedAttention) and attention.num_heads == 6 and attention.head_dim == 64
    assert network.encoder.layers.encoder_layer_0.mlp[0].out_features == 3072 - 768
    assert network(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vit_embedding_pruning_keeps_torchvision_hidden_dim_in_step():
    network = _vit_b16_two_layers()
    _prune_by_l1(network, torch.zeros(1, 3, 32, 32), {"conv_proj": 0.5})
    assert network.hidden_dim == network.conv_proj.out_channels == 384
    assert network(torch.randn(1, 3, 32, 32)).shape == (1, 10)
