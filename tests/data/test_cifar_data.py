from pathlib import Path

import numpy as np
import pytest
import torch
from data_fakes import make_cifar_files, write_cifar

from lightning_prune.data import CIFARDataModule

# Per-channel mean and std of the CIFAR training pixels, written here independently of the package.
STATS = {
    10: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    100: ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
FOLDERS = {10: "cifar-10-batches-py", 100: "cifar-100-python"}
SPLITS = {10: ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]), 100: (["train"], ["test"])}


def _split(files: dict, names: list[str], num_classes: int) -> tuple[torch.Tensor, list[int]]:
    """The split normalised from the raw pickled rows: [N, 3, 32, 32], and its labels."""
    raw = np.concatenate([files[name]["data"] for name in names]).reshape(-1, 3, 32, 32) / 255.0
    mean, std = (np.array(s).reshape(1, 3, 1, 1) for s in STATS[num_classes])
    key = "labels" if num_classes == 10 else "fine_labels"
    return torch.from_numpy((raw - mean) / std).float(), sum((files[name][key] for name in names), [])


def _all(loader) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(loader)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


@pytest.fixture(params=[10, 100])
def cifar(request, tmp_path, skip_cifar_md5):
    files = make_cifar_files(request.param)
    write_cifar(tmp_path / FOLDERS[request.param], files)
    return tmp_path, request.param, files


@pytest.mark.parametrize("in_memory", [True, False])
def test_cifar_datamodule_eval_loaders_normalise_in_file_order(cifar, in_memory):
    root, num_classes, files = cifar
    dm = CIFARDataModule(root=str(root), num_classes=num_classes, eval_batch_size=3, in_memory=in_memory)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_classes == num_classes
    train_names, test_names = SPLITS[num_classes]
    for loader, names in [(dm.val_dataloader(), test_names), (dm.test_dataloader(), test_names),
                          (dm.predict_dataloader(), test_names), (dm.train_eval_dataloader(), train_names)]:
        assert next(iter(loader))[0].shape == (3, 3, 32, 32)
        images, labels = _all(loader)
        expected_images, expected_labels = _split(files, names, num_classes)
        torch.testing.assert_close(images, expected_images)
        assert labels.tolist() == expected_labels
    assert len(dm.train_eval_dataloader()) == 7  # 20 / 19 training images in batches of 3, none dropped


def _assert_crops_of_originals(batch: torch.Tensor, labels: torch.Tensor, originals: torch.Tensor,
                               original_labels: list[int], num_classes: int) -> None:
    """Every augmented image must equal a 32x32 crop (optionally mirrored) of a black-padded original with the
    same label; and the batch must not be the originals untouched."""
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in STATS[num_classes])
    padded = torch.nn.functional.pad(originals * std + mean, (4, 4, 4, 4)).sub(mean).div(std)
    matched_label = torch.full((len(batch),), -1)
    moved = torch.zeros(len(batch), dtype=torch.bool)
    for top in range(9):
        for left in range(9):
            crop = padded[:, :, top : top + 32, left : left + 32]
            for candidate, shifted in ((crop, (top, left) != (4, 4)), (crop.flip(-1), True)):
                close = (batch[:, None] - candidate[None]).abs().amax(dim=(2, 3, 4)) < 1e-4  # [B, N]
                for i, j in close.nonzero().tolist():
                    matched_label[i] = original_labels[j]
                    moved[i] |= shifted
    assert (matched_label == labels).all()
    assert moved.any()


@pytest.mark.parametrize("in_memory", [True, False])
def test_cifar_datamodule_train_batches_are_random_crops_and_flips(cifar, in_memory):
    root, num_classes, files = cifar
    dm = CIFARDataModule(root=str(root), num_classes=num_classes, batch_size=6, in_memory=in_memory, seed=2)
    dm.setup("fit")
    originals, original_labels = _split(files, SPLITS[num_classes][0], num_classes)
    loader = dm.train_dataloader()
    assert len(loader) == -(-len(originals) // 6)
    batch, labels = next(iter(loader))
    assert batch.shape == (6, 3, 32, 32)
    _assert_crops_of_originals(batch, labels, originals, original_labels, num_classes)


def test_cifar_datamodule_augmentation_differs_per_epoch_and_repeats_per_seed(cifar):
    root, num_classes, _ = cifar

    def two_epochs(seed: int) -> list[torch.Tensor]:
        dm = CIFARDataModule(root=str(root), num_classes=num_classes, batch_size=5, seed=seed)
        dm.setup("fit")
        loader = dm.train_dataloader()
        return [_all(loader)[0] for _ in range(2)]

    first = two_epochs(seed=0)
    assert not torch.equal(first[0], first[1])
    assert all(torch.equal(a, b) for a, b in zip(first, two_epochs(seed=0), strict=True))
    assert not torch.equal(first[0], two_epochs(seed=1)[0])


@pytest.mark.parametrize(
    ("num_classes", "message"),
    [
        (10, r"cifar-10-batches-py must hold data_batch_1, data_batch_2, .*data_batch_5, test_batch, batches.meta"),
        (100, r"cifar-100-python must hold train, test, meta"),
    ],
)
def test_cifar_datamodule_missing_dataset_names_folder_and_files(tmp_path, num_classes, message):
    dm = CIFARDataModule(root=str(tmp_path), num_classes=num_classes)
    with pytest.raises(FileNotFoundError, match=message):
        dm.prepare_data()
    with pytest.raises(FileNotFoundError, match=message):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 1000}, "`num_classes` must be one of 10, 100, got 1000"),
        ({"batch_size": 0}, "`batch_size` must be an integer >= 1, got 0"),
    ],
)
def test_cifar_datamodule_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CIFARDataModule(**kwargs)


def _fake_archive_download(files: dict, fail_after: int | None = None):
    """Stands in for torchvision's download_and_extract_archive: extracts the fake batches, or only some of them
    and then fails like an interrupted download."""

    def download_and_extract_archive(url, download_root, filename, md5):
        folder = Path(download_root) / FOLDERS[10 if "cifar-10-" in filename else 100]
        for written, name in enumerate(files):
            if written == fail_after:
                raise RuntimeError("File not found or corrupted.")
            write_cifar(folder, {name: files[name]})

    return download_and_extract_archive


@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_datamodule_download_moves_the_extracted_folder_into_place(tmp_path, monkeypatch, skip_cifar_md5,
                                                                         num_classes):
    import torchvision.datasets.cifar as cifar_module

    files = make_cifar_files(num_classes, seed=3)
    monkeypatch.setattr(cifar_module, "download_and_extract_archive", _fake_archive_download(files))
    root = tmp_path / "data"
    dm = CIFARDataModule(root=str(root), num_classes=num_classes, download=True)
    dm.prepare_data()
    assert [p.name for p in root.iterdir()] == [FOLDERS[num_classes]]  # the archive went with the staging folder
    dm.setup("fit")
    assert dm.test_tensors()[1].tolist() == _split(files, SPLITS[num_classes][1], num_classes)[1]


def test_cifar_datamodule_failed_download_leaves_nothing_in_place(tmp_path, monkeypatch, skip_cifar_md5):
    import torchvision.datasets.cifar as cifar_module

    files = make_cifar_files(10)
    monkeypatch.setattr(cifar_module, "download_and_extract_archive", _fake_archive_download(files, fail_after=3))
    root = tmp_path / "data"
    dm = CIFARDataModule(root=str(root), download=True)
    with pytest.raises(RuntimeError, match=r"Downloading CIFAR-10 into .*cifar-10-batches-py failed; nothing was"):
        dm.prepare_data()
    assert list(root.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py must hold"):
        CIFARDataModule(root=str(root)).setup("fit")
