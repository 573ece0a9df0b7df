import importlib.util
from pathlib import Path

import numpy as np
import pytest
from data_fakes import write_mnist_raw

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build_mnist_mini.py"


@pytest.fixture(scope="module")
def build_script():
    spec = importlib.util.spec_from_file_location("build_mnist_mini", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def full_mnist(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    """A fake full MNIST: 8 training and 3 test images of every digit, in shuffled order."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, per_class in (("train", 8), ("t10k", 3)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
        arrays[f"{split}-labels-idx1-ubyte"] = labels
        arrays[f"{split}-images-idx3-ubyte"] = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
    raw = tmp_path / "full" / "MNIST" / "raw"
    write_mnist_raw(raw, arrays)
    return raw, arrays


def test_build_mnist_mini_writes_a_balanced_seeded_subset(build_script, full_mnist, tmp_path):
    raw, arrays = full_mnist
    out = tmp_path / "assets" / "mini.npz"
    argv = ["--raw", str(raw), "--out", str(out), "--train-per-class", "5", "--test-per-class", "2"]
    build_script.main(argv)
    subset = dict(np.load(out))
    for split, source, per_class in (("train", "train", 5), ("test", "t10k", 2)):
        indices = subset[f"{split}_indices"]
        assert subset[f"{split}_images"].shape == (10 * per_class, 28, 28)
        assert subset[f"{split}_images"].dtype == subset[f"{split}_labels"].dtype == np.uint8
        assert np.bincount(subset[f"{split}_labels"]).tolist() == [per_class] * 10
        assert (np.diff(indices) > 0).all()  # source order kept, no repeats
        assert np.array_equal(subset[f"{split}_images"], arrays[f"{source}-images-idx3-ubyte"][indices])
        assert np.array_equal(subset[f"{split}_labels"], arrays[f"{source}-labels-idx1-ubyte"][indices])
    build_script.main([*argv[:3], str(tmp_path / "again.npz"), *argv[4:]])
    again = dict(np.load(tmp_path / "again.npz"))
    assert all(np.array_equal(subset[key], again[key]) for key in subset)
    build_script.main([*argv, "--seed", "1"])
    assert not np.array_equal(np.load(out)["train_indices"], subset["train_indices"])


def test_build_mnist_mini_rejects_a_folder_outside_the_raw_layout(build_script, full_mnist):
    raw, _ = full_mnist
    with pytest.raises(ValueError, match=r"`--raw` must be a folder `<root>/MNIST/raw` \(torchvision's layout\)"):
        build_script.build_subset(raw.parent)


def test_build_mnist_mini_rejects_more_images_per_class_than_exist(build_script, full_mnist):
    raw, _ = full_mnist
    with pytest.raises(ValueError, match=r"`per_class` must be at most 8 \(the images of class 0\), got 9"):
        build_script.build_subset(raw, train_per_class=9)
