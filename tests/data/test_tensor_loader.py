import pytest
import torch
import torch.nn.functional as F

from lightning_prune.data.tensor_loader import TensorBatchLoader, random_crop_flip


def _data(n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return images, torch.arange(n)


def _epoch_labels(loader) -> list[int]:
    return torch.cat([labels for _, labels in loader]).tolist()


def test_tensor_batch_loader_unshuffled_serves_every_sample_in_order():
    images, labels = _data(10)
    loader = TensorBatchLoader(images, labels, batch_size=4)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert _epoch_labels(loader) == list(range(10))
    assert torch.equal(batches[1][0], images[4:8])


def test_tensor_batch_loader_drop_last_drops_the_short_batch():
    loader = TensorBatchLoader(*_data(10), batch_size=4, drop_last=True)
    assert len(loader) == 2
    assert _epoch_labels(loader) == list(range(8))


def test_tensor_batch_loader_shuffle_changes_per_epoch_and_repeats_per_seed():
    first = TensorBatchLoader(*_data(50), batch_size=8, shuffle=True, seed=3)
    epochs = [_epoch_labels(first) for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(50))
    assert epochs[0] != epochs[1]
    again = TensorBatchLoader(*_data(50), batch_size=8, shuffle=True, seed=3)
    assert [_epoch_labels(again) for _ in range(2)] == epochs
    other_seed = TensorBatchLoader(*_data(50), batch_size=8, shuffle=True, seed=4)
    assert _epoch_labels(other_seed) != epochs[0]
    again.set_epoch(1)
    assert _epoch_labels(again) == epochs[1]


def test_tensor_batch_loader_replicas_split_one_permutation_evenly():
    per_rank = [
        TensorBatchLoader(*_data(11), batch_size=4, shuffle=True, seed=1, num_replicas=2, rank=rank) for rank in (0, 1)
    ]
    labels = [_epoch_labels(loader) for loader in per_rank]
    assert [len(loader) for loader in per_rank] == [2, 2]
    assert len(labels[0]) == len(labels[1]) == 6  # 11 samples padded to 12 by wrapping around
    assert set(labels[0]) | set(labels[1]) == set(range(11))
    single = _epoch_labels(TensorBatchLoader(*_data(11), batch_size=11, shuffle=True, seed=1))
    padded = single + single[:1]
    assert labels[0] == padded[0::2] and labels[1] == padded[1::2]


def test_tensor_batch_loader_applies_the_transform_per_batch():
    loader = TensorBatchLoader(*_data(6), batch_size=4, transform=lambda images, generator: images * 10)
    images, _ = next(iter(loader))
    assert torch.equal(images, _data(6)[0][:4] * 10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": torch.arange(3)}, "`images` and `labels` must have the same length, got 10 and 3"),
        ({"batch_size": 0}, "`batch_size` must be at least 1, got 0"),
        ({"num_replicas": 2, "rank": 2}, r"`rank` must be in \[0, num_replicas=2\), got 2"),
    ],
)
def test_tensor_batch_loader_rejects_bad_arguments(kwargs, message):
    images, labels = _data(10)
    arguments = {"images": images, "labels": labels, "batch_size": 4} | kwargs
    with pytest.raises(ValueError, match=message):
        TensorBatchLoader(**arguments)


def test_random_crop_flip_matches_a_per_image_crop_and_flip():
    images = torch.randn(16, 3, 8, 8)
    fill = torch.tensor([-1.0, -2.0, -3.0])
    out = random_crop_flip(images, torch.Generator().manual_seed(7), padding=2, fill=fill)
    # Replay the same draws and crop each image by hand.
    generator = torch.Generator().manual_seed(7)
    top = torch.randint(0, 5, (16, 1), generator=generator)
    left = torch.randint(0, 5, (16, 1), generator=generator)
    flipped = torch.rand(16, 1, generator=generator) < 0.5
    for i in range(16):
        padded = torch.stack([F.pad(images[i, c], (2, 2, 2, 2), value=fill[c].item()) for c in range(3)])
        crop = padded[:, top[i, 0] : top[i, 0] + 8, left[i, 0] : left[i, 0] + 8]
        expected = crop.flip(-1) if flipped[i, 0] else crop
        assert torch.equal(out[i], expected)
    assert flipped.any() and not flipped.all()
    assert (top != 2).any()  # some images really moved


def test_random_crop_flip_without_flip_and_zero_offset_is_identity_when_padding_is_zero():
    images = torch.randn(4, 1, 5, 5)
    out = random_crop_flip(images, torch.Generator().manual_seed(0), padding=0, fill=torch.zeros(1), flip=False)
    assert torch.equal(out, images)
