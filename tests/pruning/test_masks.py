"""Mask mode is physical pruning in disguise: same outputs, same retraining trajectory; heads swap exactly."""

import copy

import pytest
import torch
import torch.nn.functional as F
from pruning_toys import ToyResNet, random_batches, randomize_batchnorm, tiny_vit
from torch import nn

from lightning_prune.pruning import HeadPrunedAttention, MaskGuard, PruningStructure, parameter_masks


def _train_both(physical: nn.Module, masked: nn.Module, guard: MaskGuard, batches, steps: int = 3):
    optimizers = [torch.optim.SGD(n.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2) for n in (physical, masked)]
    for step in range(steps):
        x, y = batches[step % len(batches)]
        losses = []
        for network, optimizer in zip((physical, masked), optimizers, strict=True):
            optimizer.zero_grad()
            loss = F.cross_entropy(network(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        guard.reapply()
        assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-6), step


def test_mask_and_physical_give_the_same_outputs_and_training_trajectory():
    torch.manual_seed(0)
    network = randomize_batchnorm(ToyResNet()).train()
    example = torch.zeros(1, 3, 8, 8)
    indices = {"stem": [1, 5], "blocks.0.conv_a": [0, 3]}
    physical, masked = copy.deepcopy(network), copy.deepcopy(network)
    PruningStructure(physical, example).prune(indices)
    masks = parameter_masks(masked, indices, example)
    guard = MaskGuard(masked, masks)
    x = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(masked.eval()(x), physical.eval()(x), rtol=1e-5, atol=1e-6)
    physical.train(), masked.train()
    _train_both(physical, masked, guard, random_batches((3, 8, 8), count=3, batch=6))
    torch.testing.assert_close(masked.eval()(x), physical.eval()(x), rtol=1e-4, atol=1e-5)
    kept = [c for c in range(8) if c not in indices["stem"]]
    torch.testing.assert_close(physical.stem.weight, masked.stem.weight[kept], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(physical.blocks[1].conv_b.weight, masked.blocks[1].conv_b.weight[kept], rtol=1e-5,
                               atol=1e-6)
    for name, mask in masks.items():
        assert (dict(masked.named_parameters())[name][mask == 0] == 0).all(), name


def test_mask_guard_keeps_zeros_under_adamw_and_removes_its_hooks():
    network = ToyResNet()
    masks = parameter_masks(network, {"blocks.1.conv_a": [2]}, torch.zeros(1, 3, 8, 8))
    guard = MaskGuard(network, masks)
    optimizer = torch.optim.AdamW(network.parameters(), lr=0.1, weight_decay=0.1)
    for x, y in random_batches((3, 8, 8), count=2):
        optimizer.zero_grad()
        F.cross_entropy(network(x), y).backward()
        assert (network.blocks[1].conv_a.weight.grad[2] == 0).all()
        optimizer.step()
    assert (network.blocks[1].conv_a.weight[2] == 0).all() and (network.blocks[1].conv_b.weight[:, 2] == 0).all()
    guard.remove()
    with torch.no_grad():  # revive the channel: without hooks, gradient reaches its entries again
        network.blocks[1].bn_a.bias[2] = 1.0
    network.zero_grad()
    F.cross_entropy(network(torch.randn(2, 3, 8, 8)), torch.tensor([0, 1])).backward()
    assert network.blocks[1].conv_b.weight.grad[:, 2].abs().sum() > 0


def test_vit_heads_and_mlp_masks_match_physical_pruning_through_training():
    network = tiny_vit()
    example = torch.zeros(1, 3, 32, 32)
    indices = {"encoder.layers.encoder_layer_0.self_attention": [1, 2], "encoder.layers.encoder_layer_1.mlp.0": [5]}
    physical, masked = copy.deepcopy(network), copy.deepcopy(network)
    PruningStructure(physical, example).prune(indices)
    assert isinstance(physical.encoder.layers[0].self_attention, HeadPrunedAttention)
    assert physical.encoder.layers[0].self_attention.num_heads == 2
    guard = MaskGuard(masked, parameter_masks(masked, indices, example))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(masked.eval()(x), physical.eval()(x), rtol=1e-5, atol=1e-5)
    physical.train(), masked.train()
    _train_both(physical, masked, guard, random_batches((3, 32, 32), count=2, batch=4, classes=5))
    torch.testing.assert_close(masked.eval()(x), physical.eval()(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch_first", [True, False])
def test_head_pruned_attention_without_pruned_heads_equals_multihead_attention(batch_first):
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(12, 3, batch_first=batch_first).eval()
    copy_ = HeadPrunedAttention.from_multihead(attention, []).eval()
    shape = (2, 5, 12) if batch_first else (5, 2, 12)
    query, key = torch.randn(shape), torch.randn(shape)
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    padding = torch.tensor([[False] * 4 + [True], [False] * 5])
    for kwargs in ({}, {"attn_mask": causal}, {"key_padding_mask": padding}, {"attn_mask": causal.float() * -1e4}):
        for need_weights in (True, False):
            expected = attention(query, key, key, need_weights=need_weights, **kwargs)
            got = copy_(query, key, key, need_weights=need_weights, **kwargs)
            torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
            if need_weights:
                torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-5)


def test_head_pruned_attention_rejects_per_head_masks():
    attention = HeadPrunedAttention.from_multihead(nn.MultiheadAttention(8, 2, batch_first=True), [0])
    x = torch.randn(1, 3, 8)
    with pytest.raises(ValueError, match=r"`attn_mask` of HeadPrunedAttention must be \[L, S\]"):
        attention(x, x, x, attn_mask=torch.zeros(2, 3, 3))
