import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lightning_prune.data import ImageNetDataModule

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _all(loader) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(loader)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def test_imagenet_datamodule_reads_the_imagefolder_layout(imagenet_root):
    dm = ImageNetDataModule(root=str(imagenet_root), batch_size=4, eval_batch_size=2, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_classes == 3 and dm.classes == ["ant", "bee", "cat"]
    train = dm.train_dataloader()
    assert isinstance(train, DataLoader) and len(train) == 2
    images, labels = next(iter(train))
    assert images.shape == (4, 3, 224, 224) and images.dtype == torch.float32 and labels.dtype == torch.int64
    # val/ has no "bee": "cat" keeps the training split's index 2.
    for loader in (dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        images, labels = _all(loader)
        assert images.shape == (3, 3, 224, 224)
        assert labels.tolist() == [0, 2, 2]
    images, labels = _all(dm.train_eval_dataloader())
    assert len(dm.train_eval_dataloader()) == 4 and labels.tolist() == [0, 0, 0, 1, 1, 2, 2]


def test_imagenet_datamodule_eval_transform_resizes_crops_and_normalises(imagenet_root):
    # A uniform image survives resize and centre crop unchanged, so every pixel must be (value/255 - mean) / std;
    # a frame of another colour narrower than the crop margin must be cut away.
    pixels = np.zeros((300, 600, 3), dtype=np.uint8)
    pixels[:, :] = (10, 128, 250)
    pixels[:, :50] = 255
    for path in (imagenet_root / "val" / "cat").iterdir():
        path.unlink()
    Image.fromarray(pixels).save(imagenet_root / "val" / "cat" / "uniform.png")
    dm = ImageNetDataModule(root=str(imagenet_root), num_workers=0)
    images, labels = _all(dm.val_dataloader())
    assert labels.tolist() == [0, 2]
    expected = (torch.tensor([10, 128, 250]) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(images[1], expected.view(3, 1, 1).expand(3, 224, 224), atol=1e-5, rtol=0)


def test_imagenet_datamodule_train_loader_shuffles_reproducibly(imagenet_root):
    def labels_of_two_epochs(seed: int) -> list[list[int]]:
        loader = ImageNetDataModule(root=str(imagenet_root), batch_size=7, num_workers=0, seed=seed).train_dataloader()
        return [_all(loader)[1].tolist() for _ in range(2)]

    epochs = [labels_of_two_epochs(seed) for seed in (0, 0, 1, 2)]
    assert epochs[0] == epochs[1]
    assert sorted(epochs[0][0]) == [0, 0, 0, 1, 1, 2, 2]
    orders = {tuple(order) for run in epochs for order in run}
    assert len(orders) > 1


@pytest.mark.parametrize("missing", ["train", "val"])
def test_imagenet_datamodule_missing_split_names_the_folders(imagenet_root, missing):
    shutil.rmtree(imagenet_root / missing)
    dm = ImageNetDataModule(root=str(imagenet_root))
    message = rf"expected class folders .*/train/<class>/\*.JPEG and .*/val/<class>/\*.*class folders: .*{missing}"
    with pytest.raises(FileNotFoundError, match=message):
        dm.prepare_data()
    with pytest.raises(FileNotFoundError, match=message):
        dm.setup("fit")
    with pytest.raises(FileNotFoundError, match=message):
        _ = dm.num_classes


def test_imagenet_datamodule_rejects_val_classes_missing_from_train(imagenet_root):
    (imagenet_root / "val" / "dog").mkdir()
    with pytest.raises(ValueError, match=r"Every class folder of `.*val` must also be in `.*train`, got 1 extra: dog"):
        ImageNetDataModule(root=str(imagenet_root)).setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"download": True}, "`download` must be false for ImageNet, got True"),
        ({"batch_size": 0}, "`batch_size` must be an integer >= 1, got 0"),
        ({"num_workers": -2}, "`num_workers` must be an integer >= 0, got -2"),
        ({"resize_size": 200}, "`resize_size` must be an integer >= 224, got 200"),
    ],
)
def test_imagenet_datamodule_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageNetDataModule(**kwargs)
