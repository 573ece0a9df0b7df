"""The `DyCoke` callback in real Trainer runs and through the CLI with the shipped tiny config."""

import csv
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.loggers import CSVLogger

from lightning_prune.callbacks import DyCoke
from lightning_prune.cli import main
from lightning_prune.data.video_qa import VideoQADataModule
from lightning_prune.dycoke import merged_token_count
from lightning_prune.modules.video_llm import VideoLLM

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "dycoke"


@pytest.fixture(scope="module")
def video_llm():
    return VideoLLM(tiny_config=True, max_new_tokens=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return VideoQADataModule(generate_synthetic=True, synthetic_dir=str(tmp_path_factory.mktemp("videos")),
                             num_frames=8, batch_size=2, synthetic_samples=3, synthetic_video_frames=8,
                             synthetic_frame_size=32)


@pytest.fixture(scope="module")
def plain_predictions(tmp_path_factory, video_llm, data):
    return _trainer(tmp_path_factory.mktemp("plain"), []).predict(video_llm, data)


def _trainer(tmp_path, callbacks):
    return L.Trainer(accelerator="cpu", logger=CSVLogger(tmp_path, name="logs"), callbacks=callbacks,
                     enable_progress_bar=False, enable_model_summary=False)


def _rows(tmp_path) -> list[dict[str, str]]:
    (path,) = list(tmp_path.rglob("metrics.csv"))
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_dycoke_predict_logs_per_batch_figures_and_leaves_the_model_as_it_was(tmp_path, video_llm, data,
                                                                              plain_predictions):
    callback = DyCoke(merging_ratio=0.5, prune_layer=2, decode_prune_ratio=0.5, variant="refined")
    compressed = _trainer(tmp_path, [callback]).predict(video_llm, data)
    assert not callback.installed
    assert video_llm.model.config.text_config._attn_implementation == "sdpa"
    assert not video_llm.model.model._forward_pre_hooks and not video_llm.model.model._forward_hooks
    assert _trainer(tmp_path / "again", []).predict(video_llm, data) == plain_predictions
    assert len(compressed) == 2 and len(compressed[0]) == 2
    rows = _rows(tmp_path)
    assert len(rows) == 2  # one row per batch
    after = merged_token_count(8, 16, 0.5, variant="refined") + 1  # 2 anchor frames whole + 6 x 8 tokens + the newline
    for row in rows:
        assert float(row["dycoke/visual_tokens_before"]) == 8 * 16 + 1
        assert float(row["dycoke/visual_tokens_after"]) == after
        assert float(row["dycoke/decode_steps"]) == 3
        full, attended = float(row["dycoke/full_kv_length_mean"]), float(row["dycoke/attended_kv_length_mean"])
        assert full - attended == after - int(0.5 * after)  # the pruned half of the visual tokens
        for name in ("prefill_latency_s", "decode_latency_per_token_s", "e2e_latency_s", "peak_memory_mb"):
            assert float(row[f"dycoke/{name}"]) > 0


def test_dycoke_with_zero_ratios_predicts_exactly_like_no_callback(tmp_path, video_llm, data, plain_predictions):
    neutral = DyCoke(merging_ratio=0.0, decode_prune_ratio=0.0)
    assert _trainer(tmp_path, [neutral]).predict(video_llm, data) == plain_predictions


def test_dycoke_test_run_logs_accuracy_and_token_figures(tmp_path, video_llm, data):
    results = _trainer(tmp_path, [DyCoke()]).test(video_llm, data, verbose=False)
    assert 0.0 <= results[0]["test/acc"] <= 1.0
    rows = _rows(tmp_path)
    assert any(row.get("dycoke/visual_tokens_after") for row in rows)
    assert any(row.get("test/acc") for row in rows)


def test_dycoke_rejects_bad_arguments_early():
    with pytest.raises(ValueError, match=r"`merging_ratio` must be in \[0, 1\), got 1.0"):
        DyCoke(merging_ratio=1.0)
    with pytest.raises(ValueError, match=r"`variant` must be one of \['official', 'refined'\], got 'exact'"):
        DyCoke(variant="exact")


def test_dycoke_checks_the_model_at_setup(tmp_path, video_llm, data):
    with pytest.raises(ValueError, match=r"`prune_layer` must be below the LLM's 4 layers"):
        _trainer(tmp_path, [DyCoke(prune_layer=4)]).predict(video_llm, data)
    assert video_llm.model.config.text_config._attn_implementation == "sdpa"


def test_cli_runs_the_tiny_config_with_the_dycoke_callback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["predict", "--config", str(CONFIGS / "tiny.yaml"), "--trainer.callbacks+=lightning_prune.callbacks.DyCoke",
          f"--data.init_args.synthetic_dir={tmp_path / 'videos'}", "--data.init_args.num_frames=8",
          "--model.init_args.max_new_tokens=3"])
    rows = _rows(tmp_path / "runs")
    assert len(rows) == 2 and all(float(row["dycoke/visual_tokens_after"]) < 129 for row in rows)
    assert list((tmp_path / "runs").rglob("offline-run-*")), "no W&B offline run was written"
