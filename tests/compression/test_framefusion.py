"""FrameFusion's pure functions against the published rule (thu-nics/FrameFusion `framefusion/main.py`).

`PublishedFrameFusion` below is re-written from the published class's definition (batch 1, brute-force loops over
patch positions and runs), not from our functions: it tracks each token's original position through a 2-D
"position embedding" that it slices exactly as the published code slices its position embeddings.
"""

import pytest
import torch

from lightning_prune.compression.framefusion import (
    TEXT_TOKEN,
    FrameFusionMethod,
    FrameFusionState,
    attention_keep_indices,
    compute_pruning_ratio,
    consecutive_similarity,
    frame_patch_types,
    merge_tokens,
)


def published_ratio(sparsities, cost, num_layers):
    product, total = 1.0, 0.0
    for s in sparsities:
        product = product * (1 - s)
        total = total + product
    remain = num_layers * cost - total
    if remain < 0:
        raise ValueError("The cost is too small")
    if remain / ((num_layers - len(sparsities)) * product) > 1:
        return 0
    return 1 - remain / ((num_layers - len(sparsities)) * product)


class PublishedFrameFusion:
    """The published `FrameFusion.forward` on `[1, S, D]` hidden states, with loops instead of its vector tricks."""

    def __init__(self, patch_type, patch_num, start, length, cost, bound, ratio_bound, num_layers):
        self.patch_type, self.patch_num = patch_type[None].clone(), patch_num
        self.start, self.length, self.original = start, length, patch_type.shape[0]
        self.cost, self.bound, self.ratio_bound, self.num_layers = cost, bound, ratio_bound, num_layers
        self.sparsity, self.finish_merging, self.finish_pruning = [], False, False

    def forward(self, hidden, positions, attention=None):
        q_len = hidden.shape[1]
        if self.finish_merging and not self.finish_pruning:
            length = self.length - (self.original - q_len)
            scores = attention.mean(dim=(1, 2))[0][self.start : self.start + length]
            ratio = published_ratio(self.sparsity, self.cost, self.num_layers)
            top = scores.topk(round(length * (1 - ratio))).indices + self.start
            keep = torch.cat([torch.arange(self.start), top, torch.arange(self.start + length, q_len)]).sort().values
            hidden, positions = hidden[:, keep], positions[:, keep]
            self.finish_pruning = True
        if not self.finish_merging:
            hidden, positions = self.merge(hidden, positions)
        return hidden, positions

    def merge(self, hidden, positions):
        upper = published_ratio(self.sparsity, self.cost, self.num_layers)
        types = self.patch_type[0]
        order = [i for p in range(self.patch_num) for i in range(len(types)) if types[i] == p]
        similarity = []
        for j, i in enumerate(order):
            if j == 0 or types[order[j - 1]] != types[i]:
                similarity.append(-2.0)
            else:
                a, b = hidden[0, i], hidden[0, order[j - 1]]
                similarity.append(float(torch.sum(a * b) / (torch.norm(a) * torch.norm(b))))
        frame_tokens = int((types != TEXT_TOKEN).sum())
        chosen = [j for j, s in enumerate(similarity) if s >= self.bound]
        ratio = len(chosen) / frame_tokens
        if ratio < upper:
            self.sparsity.append(ratio)
            if ratio < self.ratio_bound:
                self.finish_merging = True
        else:
            chosen = sorted(torch.tensor(similarity).topk(int(upper * frame_tokens)).indices.tolist())
            self.finish_merging = self.finish_pruning = True
        hidden = hidden.clone()
        chosen = set(chosen)
        j = 0
        while j < len(order):  # every run of chosen tokens is averaged into the token before it
            if j + 1 < len(order) and j + 1 in chosen and j not in chosen:
                members = []
                k = j + 1
                while k in chosen:
                    members.append(order[k])
                    k += 1
                for m in members:
                    hidden[0, order[j]] = hidden[0, order[j]] + hidden[0, m]
                hidden[0, order[j]] = hidden[0, order[j]] / (len(members) + 1)
                j = k
            else:
                j += 1
        keep = torch.tensor([i not in {order[c] for c in chosen} for i in range(len(types))])
        self.patch_type = self.patch_type[:, keep]
        return hidden[:, keep], positions[:, keep]


def _video_prompt(generator, frames, per_frame, dim, prefix, suffix, change):
    """`[S, D]`: text, frames whose tokens drift slowly except a `change` share of positions, text."""
    base = torch.randn(per_frame, dim, generator=generator)
    moving = torch.rand(per_frame, generator=generator) < change
    rows = []
    for _ in range(frames):
        base = base + 0.15 * torch.randn(per_frame, dim, generator=generator)
        base[moving] = torch.randn(int(moving.sum()), dim, generator=generator)
        rows.append(base.clone())
    text = [torch.randn(n, dim, generator=generator) for n in (prefix, suffix)]
    return torch.cat([text[0], *rows, text[1]])


def _layer(hidden, weight):
    return hidden + 0.05 * torch.tanh(hidden @ weight)


def test_compute_pruning_ratio_matches_published_formula():
    for sparsities in ([], [0.3], [0.5, 0.2, 0.05], [0.1] * 5):
        for cost in (0.2, 0.3, 0.6, 1.0):
            for layers in (8, 28):
                try:
                    expected = published_ratio(sparsities, cost, layers)
                except ValueError:
                    with pytest.raises(ValueError, match="too small"):
                        compute_pruning_ratio(sparsities, cost, layers)
                    continue
                assert compute_pruning_ratio(sparsities, cost, layers) == expected


def test_compute_pruning_ratio_hand_values():
    assert compute_pruning_ratio([], 0.3, 28) == pytest.approx(0.7)
    # One step at 50%: 28 * 0.3 - 0.5 = 7.9 left for 27 layers at half the tokens: 1 - 7.9 / 13.5.
    assert compute_pruning_ratio([0.5], 0.3, 28) == pytest.approx(1 - 7.9 / 13.5)
    assert compute_pruning_ratio([], 1.0, 4) == 0


def test_consecutive_similarity_groups_by_patch_position():
    hidden = torch.randn(2 + 3 * 4 + 1, 5)
    types = frame_patch_types(hidden.shape[0], 2, 3, 4)
    assert types.tolist() == [-1, -1] + [0, 1, 2, 3] * 3 + [-1]
    similarity, order = consecutive_similarity(hidden, types, 4)
    assert order.tolist() == [2, 6, 10, 3, 7, 11, 4, 8, 12, 5, 9, 13]
    assert similarity[[0, 3, 6, 9]].tolist() == [-2.0] * 4
    expected = torch.nn.functional.cosine_similarity(hidden[6], hidden[2], dim=0)
    torch.testing.assert_close(similarity[1], expected)


def test_merge_tokens_averages_each_run_into_the_token_before_it():
    hidden = torch.arange(12.0).view(6, 2)
    order = torch.tensor([0, 2, 4, 1, 3, 5])
    merged = torch.tensor([False, True, True, False, False, True])
    out, keep = merge_tokens(hidden.clone(), order, merged)
    assert keep.tolist() == [True, True, False, True, False, False]
    torch.testing.assert_close(out[0], (hidden[0] + hidden[2] + hidden[4]) / 3)
    torch.testing.assert_close(out[3], (hidden[3] + hidden[5]) / 2)
    torch.testing.assert_close(out[1], hidden[1])


def _compare_with_published(hidden, frames, per_frame, prefix, num_layers, cost, bound, heads, layer, generator):
    """Run ours and the published rule side by side through the layers; the sparsities and kept lengths."""
    video = frames * per_frame
    types = frame_patch_types(hidden.shape[0], prefix, frames, per_frame)
    ours = FrameFusionState(types, per_frame, types != TEXT_TOKEN, num_layers, cost, bound, 0.1)
    reference = PublishedFrameFusion(types, per_frame, prefix, video, cost, bound, 0.1, num_layers)
    positions = torch.arange(hidden.shape[0])
    ref_hidden, ref_positions = hidden[None].clone(), positions[None].clone()
    ours_hidden = hidden.clone()
    lengths, pruned = [], False
    for index in range(-1, num_layers):  # -1: the call before layer 0's attention
        attention = None
        if index >= 0:
            ours_hidden, ref_hidden = layer(ours_hidden, index), layer(ref_hidden, index)
            if ours.needs_attention:
                attention = torch.randn(heads, 1, ours_hidden.shape[0], generator=generator).softmax(-1)
                pruned = True
        assert ours.needs_attention == (reference.finish_merging and not reference.finish_pruning)
        before = ours_hidden.clone()
        keep = ours.step(ours_hidden, None if attention is None else attention[:, 0])
        changed = (ours_hidden != before).any(dim=-1).nonzero()[:, 0]
        assert changed.tolist() == ours.merged_rows.sort().values.tolist()
        ref_hidden, ref_positions = reference.forward(ref_hidden, ref_positions,
                                                      None if attention is None else attention[None])
        if keep is not None:
            ours_hidden, positions = ours_hidden[keep], positions[keep]
        lengths.append(len(positions))
        assert positions.tolist() == ref_positions[0].tolist()
        torch.testing.assert_close(ours_hidden, ref_hidden[0], rtol=1e-5, atol=1e-6)
        assert ours.sparsity_list == reference.sparsity
        assert (ours.finish_merging, ours.finish_pruning) == (reference.finish_merging, reference.finish_pruning)
    return ours.sparsity_list, lengths, pruned


@pytest.mark.parametrize("seed", range(6))
def test_framefusion_layer_by_layer_matches_published(seed):
    generator = torch.Generator().manual_seed(seed)
    frames, per_frame, dim = (4, 6, 8, 5, 3, 8)[seed], (9, 4, 6, 16, 12, 4)[seed], 12
    prefix, suffix, heads = 3 + seed % 3, 4 + seed, 2 + seed % 2
    num_layers = (4, 28, 6, 8, 3, 12)[seed]
    cost, bound = (0.3, 0.3, 0.5, 0.2, 0.6, 0.4)[seed], (0.6, 0.9, 0.5, 0.6, 0.7, 0.3)[seed]
    hidden = _video_prompt(generator, frames, per_frame, dim, prefix, suffix, change=0.2 + 0.1 * (seed % 3))
    weights = [torch.randn(dim, dim, generator=generator) for _ in range(num_layers)]
    _, lengths, _ = _compare_with_published(hidden, frames, per_frame, prefix, num_layers, cost, bound, heads,
                                            lambda h, i: _layer(h, weights[i]), generator)
    assert lengths[-1] < hidden.shape[0]  # the inputs do compress


@pytest.mark.parametrize(("seed", "spread", "shrink", "prunes"),
                         [(1, 2.0, 0.9, True), (2, 2.0, 0.85, True), (0, 2.5, 0.9, True), (0, 2.0, 0.85, False)])
def test_framefusion_several_merging_steps_match_published(seed, spread, shrink, prunes):
    # Tokens pulled towards one direction layer after layer: more pairs pass the bound at every layer, until a step
    # merges too few (then pruning) or more than the budget allows (then the most similar up to it, no pruning).
    generator = torch.Generator().manual_seed(100 + seed)
    frames, per_frame, dim, prefix, num_layers = 6 + seed, 10, 16, 2 + seed, 12 + 4 * seed
    length = prefix + frames * per_frame + 5
    direction = torch.randn(dim, generator=generator)
    hidden = torch.randn(length, dim, generator=generator)
    hidden = hidden + spread * torch.rand(length, 1, generator=generator) * direction
    sparsities, lengths, pruned = _compare_with_published(
        hidden, frames, per_frame, prefix, num_layers, 0.5, 0.6, 3,
        lambda h, i: shrink * h + (1 - shrink) * direction, generator)
    assert sum(s >= 0.1 for s in sparsities) >= 2 and pruned == prunes, (sparsities, lengths)


def test_framefusion_cost_one_keeps_every_token():
    generator = torch.Generator().manual_seed(3)
    hidden = _video_prompt(generator, 6, 8, 10, 2, 3, change=0.1)
    types = frame_patch_types(hidden.shape[0], 2, 6, 8)
    state = FrameFusionState(types, 8, types != TEXT_TOKEN, 4, cost=1.0)
    assert state.step(hidden.clone()) is None
    assert state.done


def test_framefusion_trailing_video_token_is_never_merged_but_pruned_as_video():
    hidden = torch.randn(1 + 2 * 3 + 2, 4)
    types = frame_patch_types(hidden.shape[0], 1, 2, 3)
    assert types.tolist() == [-1, 0, 1, 2, 0, 1, 2, -1, -1]
    attention = torch.zeros(2, hidden.shape[0])
    attention[:, 7] = 1.0  # the trailing (newline) video token is the most attended
    visual = torch.zeros(hidden.shape[0], dtype=torch.bool)
    visual[1:8] = True
    keep = attention_keep_indices(attention, visual, 6 / 7)
    assert keep.tolist() == [0, 7, 8]


@pytest.mark.parametrize(("settings", "message"), [
    ({"cost": 0.0}, r"`cost` must be in \(0, 1\], got 0.0"),
    ({"cost": 1.5}, r"`cost` must be in \(0, 1\], got 1.5"),
    ({"similarity_lower_bound": 1.5}, r"`similarity_lower_bound` must be in \[-1, 1\], got 1.5"),
    ({"ratio_lower_bound": -0.1}, r"`ratio_lower_bound` must be in \[0, 1\], got -0.1"),
])
def test_framefusion_rejects_out_of_range_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        FrameFusionMethod(**settings)


def test_compute_pruning_ratio_rejects_a_budget_already_spent():
    with pytest.raises(ValueError, match="`cost` is too small"):
        compute_pruning_ratio([0.0, 0.0, 0.0], 0.5, 4)


def test_framefusion_budget_is_its_cost():
    method = FrameFusionMethod.at_budget(0.25)
    assert (method.cost, method.similarity_lower_bound, method.ratio_lower_bound) == (0.25, 0.6, 0.1)
