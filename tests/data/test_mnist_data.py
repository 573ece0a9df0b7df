from pathlib import Path

import numpy as np
import pytest
import torch
from data_fakes import MNIST_FOLDERS, make_mnist_arrays, write_idx_images, write_idx_labels
from torch.utils.data import DataLoader

from lightning_prune.data import MNISTDataModule, MNISTMiniDataModule
from lightning_prune.data.tensor_loader import TensorBatchLoader

# The published mean and std of each variant's training pixels, written here independently of the package.
STATS = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530), "kmnist": (0.1918, 0.3483)}


def _expected_images(raw: np.ndarray, variant: str) -> torch.Tensor:
    """Pad 2 black pixels, scale to [0, 1], normalise: [N, 1, 32, 32]."""
    mean, std = STATS[variant]
    padded = np.pad(raw.astype(np.float64), ((0, 0), (2, 2), (2, 2))) / 255.0
    return torch.from_numpy((padded - mean) / std).float().unsqueeze(1)


def _all(loader) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(loader)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


@pytest.mark.parametrize("variant", list(MNIST_FOLDERS))
@pytest.mark.parametrize("in_memory", [True, False])
def test_mnist_datamodule_eval_loaders_pad_and_normalise_every_variant(mnist_root, variant, in_memory):
    root, arrays = mnist_root
    dm = MNISTDataModule(root=str(root), variant=variant, batch_size=4, eval_batch_size=5, in_memory=in_memory)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_classes == 10
    raw = arrays[variant]
    for loader, split in [(dm.val_dataloader(), "t10k"), (dm.test_dataloader(), "t10k"),
                          (dm.predict_dataloader(), "t10k"), (dm.train_eval_dataloader(), "train")]:
        assert isinstance(loader, TensorBatchLoader if in_memory else DataLoader)
        first_x, _ = next(iter(loader))
        assert first_x.shape == (5, 1, 32, 32) and first_x.dtype == torch.float32
        images, labels = _all(loader)
        # No shuffle, no drop_last: every image in file order.
        torch.testing.assert_close(images, _expected_images(raw[f"{split}-images-idx3-ubyte"], variant))
        assert labels.dtype == torch.int64
        assert labels.tolist() == raw[f"{split}-labels-idx1-ubyte"].tolist()
    assert len(dm.train_eval_dataloader()) == 5  # 23 images in batches of 5
    border = images[:, :, :2, :]
    torch.testing.assert_close(border, torch.full_like(border, -STATS[variant][0] / STATS[variant][1]))


@pytest.mark.parametrize("in_memory", [True, False])
def test_mnist_datamodule_train_loader_shuffles_per_epoch_reproducibly(mnist_root, in_memory):
    root, arrays = mnist_root

    def two_epochs(seed: int) -> list[list[int]]:
        dm = MNISTDataModule(root=str(root), batch_size=4, in_memory=in_memory, seed=seed)
        dm.setup("fit")
        loader = dm.train_dataloader()
        assert len(loader) == 6
        return [_all(loader)[1].tolist() for _ in range(2)]

    epochs = two_epochs(seed=0)
    file_labels = arrays["mnist"]["train-labels-idx1-ubyte"].tolist()
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(file_labels)
    assert epochs[0] != epochs[1] and epochs[0] != file_labels
    assert two_epochs(seed=0) == epochs
    assert two_epochs(seed=1) != epochs


def test_mnist_datamodule_train_batches_are_the_normalised_images(mnist_root):
    root, arrays = mnist_root
    dm = MNISTDataModule(root=str(root), batch_size=8)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    expected = _expected_images(arrays["mnist"]["train-images-idx3-ubyte"], "mnist")
    file_labels = torch.from_numpy(arrays["mnist"]["train-labels-idx1-ubyte"]).long()
    for image, label in zip(images, labels, strict=True):
        match = (expected - image).abs().amax(dim=(1, 2, 3)) < 1e-5
        assert match.any() and (file_labels[match] == label).all()


def test_mnist_datamodule_train_tensors_are_held_on_the_device(mnist_root):
    root, _ = mnist_root
    dm = MNISTDataModule(root=str(root), device="cpu")
    images, labels = dm.train_tensors()
    assert images.shape == (23, 1, 32, 32) and images.device.type == "cpu" and labels.dtype == torch.int64
    assert dm.train_tensors()[0] is images  # decoded once
    assert dm.test_tensors()[0].shape == (9, 1, 32, 32)


@pytest.mark.parametrize("variant", list(MNIST_FOLDERS))
def test_mnist_datamodule_missing_dataset_names_folder_and_files(tmp_path, variant):
    dm = MNISTDataModule(root=str(tmp_path), variant=variant)
    expected = rf"{MNIST_FOLDERS[variant]}/raw must hold train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k"
    with pytest.raises(FileNotFoundError, match=expected):
        dm.prepare_data()
    hint = rf"missing: .*t10k-labels-idx1-ubyte\). Set `download: true` .* holds {MNIST_FOLDERS[variant]}/raw\."
    with pytest.raises(FileNotFoundError, match=hint):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variant": "emnist"}, "`variant` must be one of 'mnist', 'fashion_mnist', 'kmnist', got 'emnist'"),
        ({"batch_size": 0}, "`batch_size` must be an integer >= 1, got 0"),
        ({"eval_batch_size": -3}, "`eval_batch_size` must be an integer >= 1, got -3"),
        ({"num_workers": -1}, "`num_workers` must be an integer >= 0, got -1"),
        ({"device": "gpu-please"}, "`device` must be a torch device such as 'cpu' or 'cuda:0', got 'gpu-please'"),
    ],
)
def test_mnist_datamodule_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MNISTDataModule(**kwargs)


def _fake_download(arrays: dict[str, np.ndarray], fail_on: str | None = None):
    """Stands in for torchvision's download_and_extract_archive: writes the extracted IDX file, or half of it
    and then fails like a dropped connection."""
    calls = []

    def download_and_extract_archive(url, download_root, filename, md5):
        calls.append(filename)
        name = filename.removesuffix(".gz")
        path = Path(download_root) / name
        (write_idx_images if "images" in name else write_idx_labels)(path, arrays[name])
        if name == fail_on:
            with open(path, "r+b") as file:
                file.truncate(100)
            raise RuntimeError("connection reset by peer")

    return download_and_extract_archive, calls


def test_mnist_datamodule_download_moves_complete_files_into_place(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as mnist_module

    arrays = make_mnist_arrays(seed=5)
    fake, calls = _fake_download(arrays)
    monkeypatch.setattr(mnist_module, "download_and_extract_archive", fake)
    root = tmp_path / "data"
    (root / "KMNIST" / "raw").mkdir(parents=True)
    (root / "KMNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"half a file")  # left by an older tool
    dm = MNISTDataModule(root=str(root), variant="kmnist", download=True)
    dm.prepare_data()
    assert len(calls) == 4
    assert sorted(p.name for p in (root / "KMNIST").iterdir()) == ["raw"]  # no staging folder left
    dm.setup("fit")
    assert dm.train_tensors()[1].tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    dm.prepare_data()  # complete: nothing fetched again
    assert len(calls) == 4


def test_mnist_datamodule_failed_download_leaves_nothing_in_place(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as mnist_module

    fake, calls = _fake_download(make_mnist_arrays(seed=5), fail_on="t10k-images-idx3-ubyte")
    monkeypatch.setattr(mnist_module, "download_and_extract_archive", fake)
    root = tmp_path / "data"
    dm = MNISTDataModule(root=str(root), variant="fashion_mnist", download=True)
    with pytest.raises(RuntimeError, match=r"Downloading FashionMNIST into .*FashionMNIST/raw failed; nothing was"):
        dm.prepare_data()
    assert "t10k-images-idx3-ubyte.gz" in calls
    assert [p.relative_to(root) for p in root.rglob("*")] == [root.joinpath("FashionMNIST").relative_to(root)]
    with pytest.raises(FileNotFoundError, match="FashionMNIST/raw must hold"):
        MNISTDataModule(root=str(root), variant="fashion_mnist").setup("fit")


def test_mnist_mini_datamodule_is_a_balanced_real_mnist_subset():
    from importlib import resources

    with resources.files("lightning_prune.data").joinpath("assets/mnist_mini.npz").open("rb") as file:
        asset = dict(np.load(file))
    assert asset["train_images"].shape == (6000, 28, 28) and asset["train_images"].dtype == np.uint8
    assert asset["test_images"].shape == (1000, 28, 28) and asset["test_labels"].dtype == np.uint8
    assert np.bincount(asset["train_labels"]).tolist() == [600] * 10
    assert np.bincount(asset["test_labels"]).tolist() == [100] * 10
    assert 0.12 < asset["train_images"].mean() / 255 < 0.14  # real digits: MNIST's pixel mean is 0.1307
    assert len(np.unique(asset["train_indices"])) == 6000

    dm = MNISTMiniDataModule(batch_size=256, eval_batch_size=1000)
    dm.prepare_data()
    dm.setup("fit")
    images, labels = dm.test_tensors()
    torch.testing.assert_close(images, _expected_images(asset["test_images"], "mnist"))
    assert labels.tolist() == asset["test_labels"].tolist()
    assert len(dm.train_dataloader()) == 24 and len(dm.train_eval_dataloader()) == 6
    assert dm.num_classes == 10
    per_image = MNISTMiniDataModule(eval_batch_size=1000, in_memory=False).val_dataloader()
    torch.testing.assert_close(next(iter(per_image))[0], images)


def test_mnist_mini_datamodule_trains_under_lightning():
    import lightning.pytorch as pl

    class Linear(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(32 * 32, 10)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.layer(x.flatten(1)), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_acc", (self.layer(x.flatten(1)).argmax(1) == y).float().mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(
        max_epochs=2, limit_train_batches=3, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )
    trainer.fit(Linear(), datamodule=MNISTMiniDataModule(batch_size=64))
    assert trainer.global_step == 6
    assert trainer.num_training_batches == 3
    assert 0.0 <= trainer.callback_metrics["val_acc"] <= 1.0


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        ("train-images-idx3-ubyte", lambda data: data[:-100],
         r"must hold 18,048 bytes as its header says \(23 x 28 x 28 values\), got 17,948 \(truncated or corrupt\)"),
        ("t10k-labels-idx1-ubyte", lambda data: b"\x00\x00\x08\x03" + data[4:],
         r"must start with the IDX magic number 0x00000801, got 0x00000803 \(not an IDX file, or corrupt\)"),
        ("t10k-images-idx3-ubyte", lambda data: b"",
         r"must start with the IDX magic number 0x00000803, got 0 bytes \(not an IDX file, or corrupt\)"),
    ],
)  # fmt: skip
def test_mnist_datamodule_corrupt_idx_file_is_named_before_any_training(mnist_root, name, damage, message):
    root, _ = mnist_root
    path = root / "MNIST" / "raw" / name
    path.write_bytes(damage(path.read_bytes()))
    datamodule = MNISTDataModule(root=str(root))
    with pytest.raises(ValueError, match=rf"^`{path}` {message}\. Copy it again, or delete .*MNIST/raw and set"):
        datamodule.setup("fit")


@pytest.mark.parametrize("in_memory", [True, False])
def test_mnist_datamodule_train_order_follows_the_epoch_lightning_sets(mnist_root, in_memory):
    """Lightning calls `set_epoch` on the loader's sampler at every epoch start; a resumed fit sets the epoch it
    resumes at and must see the order an uninterrupted fit sees there."""
    root, _ = mnist_root

    def loader():
        dm = MNISTDataModule(root=str(root), batch_size=4, in_memory=in_memory, seed=3)
        dm.setup("fit")
        return dm.train_dataloader()

    uninterrupted = loader()
    orders = [_all(uninterrupted)[1].tolist() for _ in range(3)]
    resumed = loader()
    resumed.sampler.set_epoch(2)
    assert _all(resumed)[1].tolist() == orders[2] != orders[1]
