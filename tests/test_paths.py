"""`lightning_prune._paths`: shipped asset paths resolve from any working directory."""

from pathlib import Path

import pytest

import lightning_prune
from lightning_prune._paths import resolve_path, resolve_paths
from lightning_prune.data import TextDataModule

PACKAGE = Path(lightning_prune.__file__).resolve().parent
ASSET = "lightning_prune/data/assets/tiny_text"


def test_resolve_path_takes_a_missing_package_relative_path_inside_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_path(ASSET) == str(PACKAGE / "data/assets/tiny_text")
    assert resolve_paths([f"{ASSET}/train.txt"]) == [str(PACKAGE / "data/assets/tiny_text/train.txt")]
    assert resolve_paths(None) is None


def test_resolve_path_keeps_a_path_that_exists_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ASSET).mkdir(parents=True)  # a folder of the user's with the same name wins, as before
    assert resolve_path(ASSET) == ASSET
    assert resolve_path("data/train.txt") == "data/train.txt"  # not the package's: unchanged even if missing
    assert resolve_path("lightning_prune/no/such/file") == "lightning_prune/no/such/file"
    assert resolve_path(str(tmp_path / "x")) == str(tmp_path / "x")


def test_resolve_path_pkg_scheme_names_a_file_in_an_importable_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_path(f"pkg://{ASSET}/val.txt") == str(PACKAGE / "data/assets/tiny_text/val.txt")
    assert Path(resolve_path("pkg://pytest/__init__.py")) == Path(pytest.__file__)
    with pytest.raises(ValueError, match=r"must be pkg://<package>/<path inside it> .* got 'pkg://no_such_pkg/x'"):
        resolve_path("pkg://no_such_pkg/x")


def test_text_datamodule_reads_the_shipped_corpus_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = TextDataModule([f"{ASSET}/train.txt"], ASSET, val_files=[f"pkg://{ASSET}/val.txt"], block_size=16)
    data.setup()
    lines = (PACKAGE / "data/assets/tiny_text/val.txt").read_text().split()
    assert data.hparams.tokenizer == ASSET  # the saved config keeps the portable form
    assert len(data.val_dataloader().dataset) == len(data._blocks["val"]) > 0
    assert data.tokenizer.decode(data._blocks["val"][0][:4]).split() == lines[:4]
