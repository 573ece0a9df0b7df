"""Decode-step KV pruning maths and state, against brute-force computations on random tensors."""

import pytest
import torch

from lightning_prune.dycoke import DecodePruning, last_query_attention, select_visual_tokens
from lightning_prune.dycoke.kv_pruning import gather_positions


def _brute_force_attention(query, key, mask, scaling):
    """softmax(q k^T) of the last query with keys repeated per head, averaged over heads, in float64."""
    groups = query.shape[1] // key.shape[1]
    keys = key.repeat_interleave(groups, dim=1).double()
    scores = (query[:, :, -1:].double() @ keys.transpose(-1, -2)).squeeze(2) * scaling  # [B, H, S]
    if mask is not None:
        scores = scores.masked_fill(~mask[:, :, -1], float("-inf"))
    return scores.softmax(-1).mean(1)


def test_last_query_attention_matches_brute_force_with_grouped_heads_and_padding():
    gen = torch.Generator().manual_seed(0)
    query, key = torch.randn(2, 6, 3, 8, generator=gen), torch.randn(2, 2, 11, 8, generator=gen)
    mask = torch.ones(2, 1, 3, 11, dtype=torch.bool)
    mask[1, :, :, :4] = False  # left padding of the second sample
    result = last_query_attention(query, key, mask, 0.3)
    expected = _brute_force_attention(query, key, mask, 0.3)
    torch.testing.assert_close(result.double(), expected, rtol=1e-5, atol=1e-6)
    assert torch.all(result[1, :4] == 0)
    torch.testing.assert_close(result.sum(-1), torch.ones(2))


def test_last_query_attention_adds_float_masks():
    gen = torch.Generator().manual_seed(1)
    query, key = torch.randn(1, 2, 1, 4, generator=gen), torch.randn(1, 2, 5, 4, generator=gen)
    bool_mask = torch.tensor([False, True, True, False, True]).view(1, 1, 1, 5)
    float_mask = torch.zeros(1, 1, 1, 5).masked_fill(~bool_mask, torch.finfo(torch.float32).min)
    torch.testing.assert_close(last_query_attention(query, key, float_mask, 0.5),
                               last_query_attention(query, key, bool_mask, 0.5))


def test_select_visual_tokens_is_the_sorted_top_k():
    attention = torch.rand(3, 40, generator=torch.Generator().manual_seed(2))
    selected = select_visual_tokens(attention, 7)
    for row in range(3):
        ranked = sorted(range(40), key=lambda i: -attention[row, i].item())
        assert selected[row].tolist() == sorted(ranked[:7])


def test_select_visual_tokens_rejects_a_keep_beyond_the_span():
    with pytest.raises(ValueError, match=r"`keep` must be in \[0, 4\], got 5"):
        select_visual_tokens(torch.rand(1, 4), 5)


def test_gather_positions_picks_per_sample_positions():
    states = torch.arange(2 * 3 * 6 * 2).view(2, 3, 6, 2)
    index = torch.tensor([[0, 5], [2, 3]])
    result = gather_positions(states, index, 2)
    assert torch.equal(result[0], states[0][:, [0, 5]]) and torch.equal(result[1], states[1][:, [2, 3]])
    assert torch.equal(gather_positions(states[:1], index[:1], 2), states[:1, :, [0, 5]])


def _decode(pruning, keys, values, steps, prompt_length, layers=(2, 3), batch_order=None):
    """Run `steps` decode steps on growing slices of fixed random caches; yield (layer, pruned keys, expected keys)."""
    gen = torch.Generator().manual_seed(5)
    for step in range(steps):
        length = prompt_length + step + 1
        if batch_order is not None and step == steps - 1:
            keys, values = keys[batch_order], values[batch_order]  # a beam reorder between steps
        query = torch.randn(keys.shape[0], 4, 1, keys.shape[-1], generator=gen)
        pruning.observe(query, keys[:, :, :length], None, 0.5)
        index = pruning.attended_positions(length)
        for layer in layers:
            pruned_k, pruned_v, _ = pruning.prune(layer, keys[:, :, :length], values[:, :, :length], None)
            yield layer, (pruned_k, pruned_v), (gather_positions(keys[:, :, :length], index, 2),
                                                gather_positions(values[:, :, :length], index, 2))


@pytest.mark.parametrize("reuse_threshold", [None, 0.9, -1.0])
@pytest.mark.parametrize("batch", [1, 2])
def test_decode_pruning_keeps_exactly_the_attended_entries_across_steps(reuse_threshold, batch):
    gen = torch.Generator().manual_seed(3)
    prompt, visual = 30, torch.arange(5, 25).expand(batch, -1)
    keys, values = torch.randn(batch, 2, 40, 8, generator=gen), torch.randn(batch, 2, 40, 8, generator=gen)
    pruning = DecodePruning(prune_layer=2, ratio=0.7, reuse_threshold=reuse_threshold, variant="refined")
    pruning.start(visual, prompt)
    for _, pruned, expected in _decode(pruning, keys, values, steps=6, prompt_length=prompt):
        assert torch.equal(pruned[0], expected[0]) and torch.equal(pruned[1], expected[1])
    index = pruning.attended_positions(prompt + 6)
    assert index.shape == (batch, 10 + 6 + 6)  # text 10, int(0.3 * 20) = 6 visual, 6 generated
    if reuse_threshold == -1.0:
        assert pruning.reused_steps == 5  # every step after the first reuses
    if reuse_threshold is None:
        assert pruning.reused_steps == 0


def test_decode_pruning_selects_by_layer_attention_and_rebuilds_after_a_beam_reorder():
    gen = torch.Generator().manual_seed(4)
    prompt, visual = 30, torch.arange(5, 25).expand(2, -1)
    keys, values = torch.randn(2, 2, 40, 8, generator=gen), torch.randn(2, 2, 40, 8, generator=gen)
    # always reuse: stale copies would show
    pruning = DecodePruning(prune_layer=2, ratio=0.5, reuse_threshold=-1.0, variant="refined")
    pruning.start(visual, prompt)
    results = list(_decode(pruning, keys, values, steps=5, prompt_length=prompt, batch_order=torch.tensor([1, 0])))
    for _, pruned, expected in results:
        assert torch.equal(pruned[0], expected[0]) and torch.equal(pruned[1], expected[1])


def test_decode_pruning_first_selection_is_the_top_visual_attention():
    gen = torch.Generator().manual_seed(6)
    query, keys = torch.randn(1, 4, 1, 8, generator=gen), torch.randn(1, 2, 31, 8, generator=gen)
    pruning = DecodePruning(prune_layer=1, ratio=0.75, reuse_threshold=None)
    visual = torch.arange(3, 23)[None]
    pruning.start(visual, 30)
    pruning.observe(query, keys, None, 0.35)
    attention = _brute_force_attention(query, keys, None, 0.35)[0, 3:23]
    top = sorted(sorted(range(20), key=lambda i: -attention[i].item())[:5])
    index = pruning.attended_positions(31)[0].tolist()
    assert index == [0, 1, 2, *range(23, 30), *[3 + i for i in top], 30]


def test_decode_pruning_refuses_a_step_its_scoring_layer_did_not_see():
    pruning = DecodePruning(prune_layer=2, ratio=0.5)
    pruning.start(torch.arange(2, 6)[None], 8)
    with pytest.raises(RuntimeError, match=r"layer 1 did not score this decode step \(cache length 9\)"):
        pruning.prune(2, torch.zeros(1, 1, 9, 2), torch.zeros(1, 1, 9, 2), None)


def test_decode_pruning_with_ratio_zero_is_inactive():
    pruning = DecodePruning(prune_layer=2, ratio=0.0)
    pruning.start(torch.arange(2, 6)[None], 8)
    assert not pruning.active
    pruning.reset()
    assert pruning.visual_positions is None


@pytest.mark.parametrize("variant", ["official", "refined"])
def test_decode_pruning_on_a_similar_step_attends_to_all_entries_official_or_the_previous_selection_refined(variant):
    gen = torch.Generator().manual_seed(7)
    prompt, visual = 30, torch.arange(5, 25)[None]
    keys, values = torch.randn(1, 2, 40, 8, generator=gen), torch.randn(1, 2, 40, 8, generator=gen)
    query = torch.randn(1, 4, 1, 8, generator=gen)
    pruning = DecodePruning(prune_layer=2, ratio=0.5, reuse_threshold=0.9, variant=variant)
    pruning.start(visual, prompt)
    pruning.observe(query, keys[:, :, :31], None, 0.5)  # first step: a fresh selection
    first = pruning.attended_positions(31)
    pruned, _, _ = pruning.prune(2, keys[:, :, :31], values[:, :, :31], None)
    assert torch.equal(pruned, keys[:, :, first[0]])
    # Same query, one more key: the visual attention only rescales (cosine 1), so the step is similar.
    pruning.observe(query, keys[:, :, :32], None, 0.5)
    pruned_k, pruned_v, mask = pruning.prune(2, keys[:, :, :32], values[:, :, :32], None)
    assert pruning.reused_steps == 1
    if variant == "official":
        assert torch.equal(pruned_k, keys[:, :, :32]) and torch.equal(pruned_v, values[:, :, :32]) and mask is None
        assert pruning.attended_lengths == [31 - 10, 32]
    else:
        expected = torch.cat([first[0], torch.tensor([31])])
        assert torch.equal(pruned_k, keys[:, :, expected]) and torch.equal(pruned_v, values[:, :, expected])
        assert pruning.attended_lengths == [21, 22]


def test_decode_pruning_official_masks_only_the_samples_that_are_not_on_a_similar_step():
    gen = torch.Generator().manual_seed(8)
    prompt, visual = 30, torch.arange(5, 25).expand(2, -1)
    keys, values = torch.randn(2, 2, 40, 8, generator=gen), torch.randn(2, 2, 40, 8, generator=gen)
    query = torch.randn(2, 4, 1, 8, generator=gen)
    pruning = DecodePruning(prune_layer=2, ratio=0.5, reuse_threshold=0.9)
    pruning.start(visual, prompt)
    pruning.observe(query, keys[:, :, :31], None, 0.5)
    second = query.clone()
    second[1] = -query[1]  # sample 1 looks elsewhere: not similar; sample 0 repeats itself: similar
    pruning.observe(second, keys[:, :, :32], None, 0.5)
    attention = _brute_force_attention(second, keys[:, :, :32], None, 0.5)[1, 5:25]
    top = sorted(5 + i for i in attention.argsort(descending=True)[:10].tolist())
    pruned_k, _, mask = pruning.prune(2, keys[:, :, :32], values[:, :, :32], None)
    assert torch.equal(pruned_k, keys[:, :, :32]) and mask.shape == (2, 1, 1, 32)
    assert bool((mask[0] == 0).all())  # sample 0 attends to every entry
    visible = (mask[1, 0, 0] == 0).nonzero().flatten().tolist()
    assert visible == sorted([*range(5), *top, *range(25, 32)])
    assert pruning.attended_lengths[-1] == (32 + 22) / 2
