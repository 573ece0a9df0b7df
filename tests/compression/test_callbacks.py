"""The compression callbacks in real Trainer runs and through the CLI with the shipped tiny configs."""

import logging
from pathlib import Path

import lightning as L
import pytest

from lightning_prune.callbacks import DyCoke, FastV, RandomTokens, UniformSpatial, UniformTemporal, VisionZip
from lightning_prune.cli import main
from lightning_prune.data.video_qa import VideoQADataModule
from lightning_prune.modules.video_llm import VideoLLM

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "dycoke"


@pytest.fixture(scope="module")
def video_llm():
    return VideoLLM(tiny_config=True, max_new_tokens=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return VideoQADataModule(generate_synthetic=True, synthetic_dir=str(tmp_path_factory.mktemp("videos")),
                             num_frames=8, batch_size=2, synthetic_samples=2, synthetic_video_frames=8,
                             synthetic_frame_size=32)


def _trainer(callbacks):
    return L.Trainer(accelerator="cpu", logger=False, callbacks=callbacks, enable_progress_bar=False,
                     enable_model_summary=False)


@pytest.mark.parametrize("callback", [FastV(K=2, ratio=1.0), RandomTokens(keep_ratio=1.0),
                                      UniformSpatial(keep_ratio=1.0), UniformTemporal(keep_ratio=1.0),
                                      VisionZip(keep_ratio=1.0)],
                         ids=lambda callback: type(callback).__name__)
def test_a_callback_keeping_everything_predicts_as_without_it_and_leaves_the_model(video_llm, data, callback):
    plain = _trainer([]).predict(video_llm, data)
    assert _trainer([callback]).predict(video_llm, data) == plain
    assert not callback.installed
    assert video_llm.model.config.text_config._attn_implementation == "sdpa"
    assert not video_llm.model.model._forward_pre_hooks
    assert all(not layer._forward_pre_hooks for layer in video_llm.model.model.language_model.layers)


def test_two_compression_callbacks_are_refused_before_any_batch(video_llm, data):
    with pytest.raises(ValueError, match=r"One token-compression callback per run, got 2: \['FastV', 'DyCoke'\]"):
        _trainer([FastV(), DyCoke()]).predict(video_llm, data)
    assert video_llm.model.config.text_config._attn_implementation == "sdpa"


def _kept_fraction(caplog, prefix: str) -> float:
    """The kept share of visual tokens from the callback's end-of-run summary line (means over the batches)."""
    lines = [record.getMessage() for record in caplog.records if " batches (means): " in record.getMessage()]
    assert len(lines) == 1, lines
    means = dict(item.split("=") for item in lines[0].split(" batches (means): ")[1].split(", "))
    return float(means[f"{prefix}/visual_tokens_after"]) / float(means[f"{prefix}/visual_tokens_before"])


def test_fastv_runs_from_the_cli_with_the_tiny_qwen2_5_vl_config(caplog):
    caplog.set_level(logging.INFO)
    main(["predict", "--config", str(CONFIGS / "tiny_qwen2_5_vl.yaml"), "--trainer.logger=false",
          "--trainer.callbacks+=lightning_prune.callbacks.FastV", "--trainer.callbacks.init_args.ratio=0.25"])
    assert _kept_fraction(caplog, "fastv") == pytest.approx(0.25, abs=0.01)  # int(N * 0.25) of N visual tokens


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("tiny*.yaml")), ids=lambda path: path.stem)
def test_visionzip_runs_from_the_cli_on_every_tiny_config(config, caplog):
    caplog.set_level(logging.INFO)
    main(["predict", "--config", str(config), "--trainer.logger=false",
          "--trainer.callbacks+=lightning_prune.callbacks.VisionZip", "--trainer.callbacks.init_args.keep_ratio=0.25",
          "--data.init_args.synthetic_samples=2"])
    # A quarter of each frame's tokens (LLaVA-OneVision also keeps its one newline token).
    assert 0.2 <= _kept_fraction(caplog, "visionzip") <= 0.3
