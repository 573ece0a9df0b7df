"""The FrameFusion and PruneVid callbacks in real Trainer runs and through the CLI with the shipped tiny configs."""

from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_prune.callbacks import FastV, FrameFusion, PruneVid
from lightning_prune.cli import main
from lightning_prune.compression.framefusion import FrameFusionMethod
from lightning_prune.compression.prunevid import PruneVidMethod
from lightning_prune.data.video_qa import VideoQADataModule
from lightning_prune.modules.video_llm import VideoLLM

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "dycoke"


@pytest.fixture(scope="module")
def video_llm():
    return VideoLLM(tiny_config=True, max_new_tokens=3)


def _data(folder, batch_size=1):
    return VideoQADataModule(generate_synthetic=True, synthetic_dir=str(folder), num_frames=8, batch_size=batch_size,
                             synthetic_samples=2, synthetic_video_frames=8, synthetic_frame_size=32)


def _trainer(callbacks):
    return L.Trainer(accelerator="cpu", logger=False, callbacks=callbacks, enable_progress_bar=False,
                     enable_model_summary=False)


@pytest.mark.parametrize("callback", [FrameFusion(cost=1.0),
                                      PruneVid(alpha=1.0, temporal_merging=False, selected_layer=1)],
                         ids=lambda callback: type(callback).__name__)
def test_a_merging_callback_keeping_everything_predicts_as_without_it(video_llm, tmp_path, callback):
    data = _data(tmp_path)
    plain = _trainer([]).predict(video_llm, data)
    assert _trainer([callback]).predict(video_llm, data) == plain
    assert not callback.installed
    assert video_llm.model.config.text_config._attn_implementation == "sdpa"
    assert all(not layer._forward_pre_hooks for layer in video_llm.model.model.language_model.layers)


@pytest.mark.parametrize("method", [FrameFusionMethod(), PruneVidMethod(selected_layer=1)],
                         ids=lambda method: method.name)
def test_a_padded_batch_gives_per_sample_the_tokens_of_batch_1_runs(video_llm, tmp_path, method):
    data = _data(tmp_path, batch_size=2)
    data.prepare_data()
    data.setup("predict")
    batch = next(iter(data.predict_dataloader()))
    batch["question"][1] += " Look at every frame before you answer."  # a longer prompt: the other one is padded
    assert bool((video_llm.model_inputs(batch)["attention_mask"] == 0).any())
    singles = [{key: [value[row]] for key, value in batch.items()} for row in range(2)]
    assert len(video_llm.generation_batches(batch)) == 1  # no method installed: one batched generate
    with method.make_hooks(video_llm) as hooks:
        assert len(video_llm.generation_batches(batch)) == 2
        together = video_llm.generated_tokens(batch)
        alone = [video_llm.generated_tokens(single)[0] for single in singles]
        stats = hooks.pop_stats()
        with pytest.raises(ValueError, match="runs one prompt at a time"):  # what a batched generate would meet
            video_llm.model.generate(**video_llm.model_inputs(batch), max_new_tokens=1)
    assert len(together) == 2 and all(torch.equal(a, b) for a, b in zip(together, alone, strict=True))
    assert [s.visual_tokens_after for s in stats[:2]] == [s.visual_tokens_after for s in stats[2:4]]
    assert all(s.visual_tokens_after < s.visual_tokens_before for s in stats[:4])
    assert len(video_llm.generation_batches(batch)) == 1  # removed: batched again


@pytest.mark.parametrize("callback", [FrameFusion(), PruneVid(selected_layer=1)],
                         ids=lambda callback: type(callback).__name__)
def test_a_merging_callback_predicts_a_batch_of_two_as_two_batches_of_one(video_llm, tmp_path, callback):
    by_one = [row for batch in _trainer([callback]).predict(video_llm, _data(tmp_path)) for row in batch]
    by_two = _trainer([callback]).predict(video_llm, _data(tmp_path, batch_size=2))
    assert [len(batch) for batch in by_two] == [2] and by_two[0] == by_one


class _NoSplitting(L.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def predict_step(self, batch, batch_idx):  # never reached: the callback refuses first
        raise AssertionError("a batch ran")


@pytest.mark.parametrize("callback", [FrameFusion(), PruneVid(selected_layer=1)],
                         ids=lambda callback: type(callback).__name__)
def test_a_merging_callback_refuses_batches_a_module_cannot_split(video_llm, tmp_path, callback):
    name = type(callback).__name__
    with pytest.raises(ValueError, match=rf"{name} runs one prompt at a time .* _NoSplitting cannot split batches "
                                         r"\(a `VideoLLM` can\), got `batch_size` 2: set --data.batch_size 1"):
        _trainer([callback]).predict(_NoSplitting(video_llm.model), _data(tmp_path, batch_size=2))
    assert not callback.installed


def test_a_merging_callback_and_another_are_refused(video_llm, tmp_path):
    with pytest.raises(ValueError, match=r"One token-compression callback per run, got 2: \['FrameFusion', 'FastV'\]"):
        _trainer([FrameFusion(), FastV()]).predict(video_llm, _data(tmp_path))


def test_merging_callbacks_reject_out_of_range_arguments():
    with pytest.raises(ValueError, match=r"`cost` must be in \(0, 1\], got 2.0"):
        FrameFusion(cost=2.0)
    with pytest.raises(ValueError, match=r"`alpha` must be in \(0, 1\], got 0"):
        PruneVid(alpha=0)


@pytest.mark.parametrize(("callback", "config"), [("FrameFusion", "tiny_qwen2_5_vl"), ("PruneVid", "tiny_qwen3_vl"),
                                                   ("RandomTokens", "tiny_llava_next_video")])
def test_the_issues_commands_run_as_written_from_the_cli(tmp_path, caplog, callback, config):
    """The config's batch of 2 and the callback's defaults (PruneVid: the relative-depth layer on 4 layers)."""
    main(["predict", "--config", str(CONFIGS / f"{config}.yaml"), "--trainer.logger=false",
          f"--trainer.default_root_dir={tmp_path}", f"--data.synthetic_dir={tmp_path / 'videos'}",
          "--data.synthetic_samples=2", "--model.max_new_tokens=2",
          f"--trainer.callbacks+=lightning_prune.callbacks.{callback}"])
    summary = [record.getMessage() for record in caplog.records if "over 1 batches" in record.getMessage()]
    assert len(summary) == 1 and "/visual_tokens_after=" in summary[0]
    assert "visual_tokens_kept_fraction=1," not in summary[0]
