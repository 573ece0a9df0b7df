"""PruneVid's pure functions against the published code (Visual-AI/PruneVid `models/pllava/modeling_pllava.py`:
`cluster_dpc_knn`, `refine_clusters`, `segment_lengths`, `compute_cluster_vectors`, `merge_frames_dynamic`;
`elastic_cache.py`: `VTPWindowCache.process_attention`; `llama.py`: the attention without RoPE and mask).

The `published_*` functions are re-written here from those definitions (batch 1, the global random generator as
published), not from our functions.
"""

import pytest
import torch
import torch.nn.functional as F

from lightning_prune.compression.prunevid import (
    PruneVidMethod,
    dpc_knn,
    merge_frames_dynamic,
    prunevid_keep_indices,
    refine_clusters,
    segment_sizes,
    unrotated_attention,
)


def published_dpc_knn(x, cluster_num, k, centres=False):
    batch, n, channels = x.shape
    dist = torch.cdist(x.float(), x.float()) / (channels**0.5)
    nearest, _ = torch.topk(dist, k=k, dim=-1, largest=False)
    density = (-(nearest**2).mean(dim=-1)).exp()
    density = density + torch.rand(density.shape, device=density.device, dtype=density.dtype) * 1e-6
    mask = (density[:, None, :] > density[:, :, None]).type(x.dtype)
    dist_max = dist.flatten(1).max(dim=-1)[0][:, None, None]
    parent_dist, _ = (dist * mask + dist_max * (1 - mask)).min(dim=-1)
    _, down = torch.topk(parent_dist * density, k=cluster_num, dim=-1)
    gathered = torch.stack([dist[b, down[b], :] for b in range(batch)])  # index_points
    labels = gathered.argmin(dim=1)
    for b in range(batch):
        labels[b, down[b]] = torch.arange(cluster_num)
    return (labels, down) if centres else labels


def published_refine(labels):
    n = len(labels)
    refined = labels.clone()
    for cluster in torch.unique(labels):
        idx = (labels == cluster).nonzero(as_tuple=True)[0].tolist()
        segments, start, prev = [], idx[0], idx[0]
        for i in idx[1:]:
            if i == prev + 1:
                prev = i
            else:
                segments.append((start, prev))
                start = prev = i
        segments.append((start, prev))
        longest = max(e - s + 1 for s, e in segments)
        for s, e in segments:
            if longest == 1 or e - s + 1 != longest:
                refined[s : e + 1] = -1
    i = 0
    while i < n:
        if refined[i] != -1:
            i += 1
            continue
        start = i
        while i < n and refined[i] == -1:
            i += 1
        end = i - 1
        left = right = None
        left_len = right_len = 0
        if start > 0:
            left = refined[start - 1].item()
            j = start - 1
            while j >= 0 and refined[j] == left:
                j -= 1
            left_len = start - j - 1
        if end < n - 1:
            right = refined[end + 1].item()
            j = end + 1
            while j < n and refined[j] == right:
                j += 1
            right_len = j - end - 1
        if left_len > right_len:
            new = left
        elif right_len > left_len:
            new = right
        else:
            new = left if left is not None else right
        refined[start : end + 1] = 0 if new is None else new
    return refined


def published_segments(labels):
    change = torch.where(labels[1:] != labels[:-1])[0] + 1
    bounds = torch.cat([torch.tensor([0]), change, torch.tensor([len(labels)])])
    return (bounds[1:] - bounds[:-1]).tolist()


def published_cluster_vectors(x, labels, num):
    one_hot = F.one_hot(labels, num_classes=num).to(x.dtype)
    sums = torch.bmm(one_hot.permute(0, 2, 1), x)
    counts = one_hot.sum(dim=1)
    safe = counts.clone()
    safe[safe == 0] = 1
    return (sums / safe.unsqueeze(-1)).masked_fill((counts == 0).unsqueeze(-1), 0)


def published_spatial(x, ratio):
    """The cluster means, and (our port's positions) the index of each cluster's centre."""
    num = int(x.shape[1] * ratio)
    labels, down = published_dpc_knn(x, num, 7, centres=True)
    return published_cluster_vectors(x, labels, num), down[0]


def published_merge_frames_dynamic(features, num_frames, per_frame, tau, segment_ratio, cluster_ratio, k=7,
                                   sources=False):
    """`merge_frames_dynamic` on `[1, T * L, C]` (the temporal DPC-KNN with `k`, the spatial ones with 7). With
    `sources`, also our port's position of each token: `frame * L + position` of its cluster's centre (a static
    token in its segment's first frame), or of the token itself when not clustered."""
    batch, _, channels = features.shape
    frames = features.view(batch, num_frames, per_frame, channels)
    labels = published_dpc_knn(frames.mean(dim=2), int(num_frames * segment_ratio), k)
    windows = published_segments(published_refine(labels[0]))
    out, origin, static_sizes, dynamic_sizes, start = [], [], [], [], 0
    for size in windows:
        current = frames[:, start : start + size]
        normed = F.normalize(current, p=2, dim=-1)
        sim = torch.einsum("bwlc,btlc->bwtl", normed, normed)
        sim = (sim.sum(dim=-2) - 1).sum(dim=-2) / (size * (size - 1))
        is_static = sim > tau
        mask = is_static.view(batch, 1, per_frame, 1).expand(-1, size, -1, channels)
        static = torch.masked_select(current, mask).view(batch, size, -1, channels).mean(dim=1)
        places = is_static[0].nonzero()[:, 0]
        if static.shape[1] > 14:
            static, centre = published_spatial(static, cluster_ratio)
            places = places[centre]
        origin.append(start * per_frame + places)
        dynamic = torch.masked_select(current, ~mask).view(batch, size, -1, channels)
        parts = []
        for i in range(size):
            part, places = dynamic[:, i], (~is_static[0]).nonzero()[:, 0]
            if part.shape[1] > 14:
                part, centre = published_spatial(part, cluster_ratio)
                places = places[centre]
            parts.append(part)
            origin.append((start + i) * per_frame + places)
        out += [static, torch.cat(parts, dim=1)]
        static_sizes.append(static.shape[1])
        dynamic_sizes.append(out[-1].shape[1])
        start += size
    result = (torch.cat(out, dim=1), static_sizes, dynamic_sizes, windows)
    return (*result, torch.cat(origin)) if sources else result


def published_process_attention(attention, static_sizes, dynamic_sizes, window_sizes, alpha):
    """`process_attention` on `[1, H, Q, V]`, then the sort of `prompt_prefill` (without the image offset)."""
    scores = attention[0].max(dim=0)[0].max(dim=0)[0]
    kept, start = [], 0
    for static, dynamic, window in zip(static_sizes, dynamic_sizes, window_sizes, strict=True):
        end = start + static + dynamic
        part = scores[start:end]
        kept.append(torch.topk(part[:static], k=int(static * alpha)).indices + start)
        per_frame = part[static:].view(window, -1)
        top = torch.topk(per_frame, k=int(per_frame.shape[-1] * alpha), dim=-1).indices + start + static
        kept.append(torch.cat([top[i] + per_frame.shape[-1] * i for i in range(window)]))
        start = end
    return torch.cat(kept).sort()[0]


def _scenes(generator, frames, per_frame, channels, cuts, moving):
    """`[T, L, C]`: scenes that change at `cuts`; in each, a `moving` share of the positions change every frame."""
    out, scene = [], None
    dynamic = torch.rand(per_frame, generator=generator) < moving
    for t in range(frames):
        if t == 0 or t in cuts:
            scene = torch.randn(per_frame, channels, generator=generator)
        frame = scene + 0.05 * torch.randn(per_frame, channels, generator=generator)
        frame[dynamic] = torch.randn(int(dynamic.sum()), channels, generator=generator)
        out.append(frame)
    return torch.stack(out)


@pytest.mark.parametrize("seed", range(5))
def test_dpc_knn_matches_published(seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 10 + 7 * seed, 3 + seed, generator=generator)
    clusters = 2 + seed
    torch.manual_seed(seed)
    expected = published_dpc_knn(x, clusters, 7)
    labels, centres = dpc_knn(x, clusters, 7, torch.Generator().manual_seed(seed), return_centres=True)
    assert torch.equal(labels, expected)
    assert torch.equal(labels.gather(1, centres), torch.arange(clusters).expand(2, -1))


def test_refine_clusters_matches_published_on_random_labels():
    generator = torch.Generator().manual_seed(0)
    for trial in range(300):
        n = 1 + trial % 17
        labels = torch.randint(0, 1 + trial % 5, (n,), generator=generator)
        refined = refine_clusters(labels)
        assert torch.equal(refined, published_refine(labels)), labels.tolist()
        assert segment_sizes(refined) == published_segments(refined)


def test_refine_clusters_hand_example():
    # 0 0 1 0 0 0 2 2 1: cluster 0 keeps its run of 3, 1 has only single frames, 2 keeps its run of 2.
    labels = torch.tensor([0, 0, 1, 0, 0, 0, 2, 2, 1])
    assert refine_clusters(labels).tolist() == [0, 0, 0, 0, 0, 0, 2, 2, 2]


@pytest.mark.parametrize("seed", range(5))
def test_merge_frames_dynamic_matches_published(seed):
    generator = torch.Generator().manual_seed(seed)
    frames, per_frame, channels = (16, 12, 8, 16, 10)[seed], (36, 16, 25, 9, 20)[seed], 6 + seed
    cuts = [(5, 11), (4, 8), (3, 6), (4, 8, 12), (2, 7)][seed]
    video = _scenes(generator, frames, per_frame, channels, set(cuts), moving=(0.3, 0.5, 0.2, 0.4, 0.6)[seed])
    tau, segment_ratio, cluster_ratio = (0.8, 0.7, 0.8, 0.9, 0.5)[seed], (0.25, 0.25, 0.5, 0.25, 0.3)[seed], 0.5
    torch.manual_seed(100 + seed)
    tokens, static, dynamic, windows = published_merge_frames_dynamic(
        video.reshape(1, -1, channels), frames, per_frame, tau, segment_ratio, cluster_ratio)
    ours = merge_frames_dynamic(video, tau, segment_ratio, cluster_ratio, 7, torch.Generator().manual_seed(100 + seed))
    assert (ours.static_sizes, ours.dynamic_sizes, ours.window_sizes) == (static, dynamic, windows)
    torch.testing.assert_close(ours.tokens, tokens[0], rtol=0, atol=0)
    assert len(ours.sources) == len(ours.tokens) == len(ours.sources.unique())
    torch.manual_seed(100 + seed)
    *_, sources = published_merge_frames_dynamic(video.reshape(1, -1, channels), frames, per_frame, tau,
                                                 segment_ratio, cluster_ratio, sources=True)
    assert torch.equal(ours.sources, sources)
    assert len(windows) > 1 and any(s > 0 for s in static) and any(s > 0 for s in dynamic)


def test_merge_frames_dynamic_sources_point_at_the_tokens_they_stand_for():
    # Few tokens per frame: no clustering, so each merged token has one origin to check by hand.
    generator = torch.Generator().manual_seed(7)
    video = _scenes(generator, 12, 9, 5, {6}, moving=0.4)
    merged = merge_frames_dynamic(video, 0.8, 0.25, 0.5, 7, torch.Generator().manual_seed(0))
    flat = video.reshape(-1, 5)
    start, offset = 0, 0
    for static, dynamic, window in zip(merged.static_sizes, merged.dynamic_sizes, merged.window_sizes, strict=True):
        for j in range(static):  # a static token: its position's mean over the segment, placed in the first frame
            source = int(merged.sources[offset + j])
            assert source // 9 == start
            torch.testing.assert_close(merged.tokens[offset + j], video[start : start + window, source % 9].mean(0))
        for j in range(static, static + dynamic):  # a dynamic token is its own source
            torch.testing.assert_close(merged.tokens[offset + j], flat[int(merged.sources[offset + j])])
        start, offset = start + window, offset + static + dynamic


@pytest.mark.parametrize("seed", range(4))
def test_prunevid_keep_indices_matches_published(seed):
    generator = torch.Generator().manual_seed(seed)
    windows = [[3, 5], [1, 4, 2], [6], [2, 2, 2, 2]][seed]
    static = [int(torch.randint(0, 9, (1,), generator=generator)) for _ in windows]
    per_frame = [int(torch.randint(1, 7, (1,), generator=generator)) for _ in windows]
    dynamic = [w * n for w, n in zip(windows, per_frame, strict=True)]
    heads, queries, total = 3, 4 + seed, sum(static) + sum(dynamic)
    attention = torch.rand(1, heads, queries, total, generator=generator)
    alpha = (0.4, 0.5, 0.25, 0.8)[seed]
    expected = published_process_attention(attention, static, dynamic, windows, alpha)
    assert torch.equal(prunevid_keep_indices(attention[0], (static, dynamic, windows), alpha), expected)


def test_unrotated_attention_matches_the_published_eager_rows():
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, 4, 9, 8, generator=generator)
    key = torch.randn(1, 4, 9, 8, generator=generator)
    full = F.softmax(torch.matmul(query, key.transpose(2, 3)) / 8**0.5, dim=-1, dtype=torch.float32)
    torch.testing.assert_close(unrotated_attention(query, key, slice(5, None)), full[:, :, 5:])
    # Grouped keys are repeated to the query heads.
    grouped = unrotated_attention(query, key[:, :2])
    torch.testing.assert_close(grouped[:, 1], unrotated_attention(query[:, 1:2], key[:, :1])[:, 0])


@pytest.mark.parametrize(("settings", "message"), [
    ({"tau": 1.5}, r"`tau` must be in \[-1, 1\], got 1.5"),
    ({"alpha": 0.0}, r"`alpha` must be in \(0, 1\], got 0.0"),
    ({"cluster_ratio": 2}, r"`cluster_ratio` must be in \(0, 1\], got 2"),
    ({"temporal_segment_ratio": -0.1}, r"`temporal_segment_ratio` must be in \(0, 1\], got -0.1"),
    ({"selected_layer": -1}, r"`selected_layer` must be an integer >= 0, got -1"),
    ({"k": 0}, r"`k` must be an integer >= 1, got 0"),
    ({"temporal_merging": "yes"}, r"`temporal_merging` must be True or False, got 'yes'"),
])
def test_prunevid_rejects_out_of_range_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        PruneVidMethod(**settings)
