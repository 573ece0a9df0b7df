"""DyCoke as a method takes the published-evaluation settings (`score_dtype`, `carry_state_across_samples`) and runs
exactly as the DyCoke callback with them: same answers, same carried attention vector, across two predict runs."""

import lightning as L
import pytest
import torch

from lightning_prune.callbacks import DyCoke
from lightning_prune.callbacks.compression import CompressionCallback
from lightning_prune.compression import get_method
from lightning_prune.data.video_qa import VideoQADataModule
from lightning_prune.modules.video_llm import VideoLLM

SETTINGS = {"merging_ratio": 0.5, "decode_prune_ratio": 0.5, "prune_layer": 1, "reuse_threshold": None,
            "score_dtype": "float32", "carry_state_across_samples": True}


def _data(tmp_path, batch_size):
    return VideoQADataModule(generate_synthetic=True, synthetic_dir=str(tmp_path), num_frames=8,
                             batch_size=batch_size, synthetic_samples=2, synthetic_video_frames=8,
                             synthetic_frame_size=32)


def _trainer(callback):
    return L.Trainer(accelerator="cpu", logger=False, callbacks=[callback], enable_progress_bar=False,
                     enable_model_summary=False)


def test_method_dycoke_with_published_settings_equals_the_dycoke_callback(tmp_path):
    module = VideoLLM(tiny_config=True, max_new_tokens=4)
    data = _data(tmp_path, 1)
    method = get_method("dycoke", **SETTINGS)
    assert method.settings()["score_dtype"] == "float32" and method.carry_state_across_samples is True
    callback, through_method = DyCoke(**SETTINGS), CompressionCallback(method)
    expected = [_trainer(callback).predict(module, data) for _ in range(2)]
    got = [_trainer(through_method).predict(module, data) for _ in range(2)]
    assert got == expected
    carried = callback._hooks.pruning.carried_attention
    assert carried is not None  # the state was carried, and identically so
    assert torch.equal(through_method._hooks.pruning.carried_attention, carried)
    assert through_method._hooks.pruning.score_dtype == callback._hooks.pruning.score_dtype == "float32"


def test_method_dycoke_refuses_bad_published_settings_and_carrying_over_batches(tmp_path):
    with pytest.raises(ValueError, match=r"`score_dtype` must be one of \['model', 'float32'\] or None, got 'half'"):
        get_method("dycoke", score_dtype="half")
    with pytest.raises(ValueError, match=r"`carry_state_across_samples` must be true or false, got 'yes'"):
        get_method("dycoke", carry_state_across_samples="yes")
    callback = CompressionCallback(get_method("dycoke", carry_state_across_samples=True))
    with pytest.raises(ValueError, match=r"`carry_state_across_samples` needs batches of 1 sample.*batch_size 2"):
        _trainer(callback).predict(VideoLLM(tiny_config=True, max_new_tokens=2), _data(tmp_path, 2))
