"""Every `configs/dycoke/tiny_<family>.yaml` runs offline through the CLI with the DyCoke callback added."""

import csv
from pathlib import Path

import pytest

from lightning_prune.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "dycoke"
TINY_FAMILY_CONFIGS = sorted(CONFIGS.glob("tiny_*.yaml"))


def test_tiny_family_configs_exist_for_the_new_families():
    families = {path.stem.removeprefix("tiny_") for path in TINY_FAMILY_CONFIGS}
    assert families >= {"llava_next_video", "qwen2_5_vl", "qwen3_vl"}


@pytest.mark.parametrize("config", TINY_FAMILY_CONFIGS, ids=lambda path: path.stem)
def test_tiny_family_config_predicts_with_the_dycoke_callback(tmp_path, monkeypatch, config):
    monkeypatch.chdir(tmp_path)
    main(["predict", "--config", str(config), "--trainer.callbacks+=lightning_prune.callbacks.DyCoke",
          f"--data.init_args.synthetic_dir={tmp_path / 'videos'}", "--data.init_args.num_frames=8",
          "--model.init_args.max_new_tokens=3"])
    (path,) = list((tmp_path / "runs").rglob("metrics.csv"))
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    for row in rows:
        assert float(row["dycoke/visual_tokens_after"]) < float(row["dycoke/visual_tokens_before"])
        assert float(row["dycoke/decode_steps"]) == 2
