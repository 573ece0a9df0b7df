"""The `lightning_prune` model under lmms-eval: found by name, end to end on every tiny family, DyCoke on and off."""

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
from lmms_helpers import REPO, TASK, TINY, TINY_CONFIGS, video_requests
from PIL import Image

from lightning_prune.data.video_qa import moving_shapes_frames, read_video_frames, write_video
from lightning_prune.evaluation.lmms_model import LightningPruneVideoLLM, evaluate_video_tasks
from lightning_prune.evaluation.video_requests import VideoRequest, VideoRequestDataset


def _attention(lm):
    return lm.module.model.config.get_text_config()._attn_implementation


def test_manifest_imports_nothing_heavy():
    code = ("import sys, lightning_prune.evaluation.manifest as m; "
            "print([n for n in ('torch', 'lightning', 'transformers', 'lmms_eval') if n in sys.modules])")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert loaded.stdout.strip() == "[]"


def test_registry_finds_the_class_by_name():
    from lmms_eval.models import get_model

    names = {point.name: point.value for point in entry_points(group="lmms_eval.models")}
    assert names["lightning_prune"] == "lightning_prune.evaluation.manifest:lmms_eval_models"
    assert get_model("lightning_prune") is LightningPruneVideoLLM


@pytest.mark.slow  # an lmms-eval harness run (simple_evaluate)
@pytest.mark.parametrize("dycoke", [False, True], ids=["dycoke_off", "dycoke_on"])
@pytest.mark.parametrize("config", TINY_CONFIGS, ids=lambda path: path.stem)
def test_simple_evaluate_runs_the_tiny_task_and_restores_the_model(config, dycoke, in_task_folder):
    lm = LightningPruneVideoLLM(config=str(config), dycoke=dycoke, device="cpu", batch_size=2, report="report")
    module, attention = lm.module, _attention(lm)  # lmms-eval's clean() drops the model from `lm` at the end
    results = evaluate_video_tasks(lm, [TASK], limit=2, include_default_tasks=False)
    assert 0.0 <= results["results"][TASK]["accuracy,none"] <= 1.0
    assert [sample["doc_id"] for sample in results["samples"][TASK]] == [0, 1]
    assert module.model.config.get_text_config()._attn_implementation == attention
    report = json.loads((in_task_folder / "report" / "lightning_prune_efficiency.json").read_text())
    assert report["dycoke"] == lm.settings.dycoke and report["num_frames"] == lm.settings.num_frames
    assert (report["dycoke"] is None) == (not dycoke)
    assert sorted(row["doc_id"] for row in report["samples"]) == [0, 1]
    for row in report["samples"]:
        if dycoke:  # DyCoke's defaults merge tokens
            assert 0 < row["visual_tokens_after"] < row["visual_tokens_before"]
        else:
            assert row["visual_tokens_after"] == row["visual_tokens_before"] > 0
        assert row["prefill_s"] > 0 and row["peak_memory_mb"] > 0 and row["batch_size"] == 2
    assert report["summary"]["samples"] == 2 and (report["summary"]["visual_tokens_kept_fraction"] < 1) == dycoke
    assert results["throughput"]["avg_visual_tokens_after"] == pytest.approx(report["summary"]["visual_tokens_after"])


def test_tiny_llava_onevision_counts_its_visual_tokens(in_task_folder):
    # 16 frames of 28x28 pixels in 4x4 patches: a 7x7 grid pooled to 4x4 = 16 tokens a frame, plus one newline
    requests, docs = video_requests(["data/lightning_prune_tiny/video_0.mp4"])
    lm = LightningPruneVideoLLM(config=str(TINY), device="cpu")
    lm.task_dict = docs
    lm.generate_until(requests)
    assert [row["visual_tokens_before"] for row in lm.efficiency_rows] == [16 * 16 + 1]
    assert [row["visual_tokens_after"] for row in lm.efficiency_rows] == [16 * 16 + 1]  # DyCoke off


@pytest.mark.parametrize("config", TINY_CONFIGS, ids=lambda path: path.stem)
def test_dycoke_with_nothing_to_drop_answers_exactly_as_dycoke_off(config, in_task_folder):
    videos = [f"data/lightning_prune_tiny/video_{i}.mp4" for i in range(3)]
    answers = {}
    for name, extra in {"off": {"dycoke": False}, "zero": {"dycoke": True, "K": 0.0, "P": 0.0},
                        "default": {"dycoke": True}}.items():
        requests, docs = video_requests(videos, gen_kwargs={"max_new_tokens": 8, "until": []})
        lm = LightningPruneVideoLLM(config=str(config), device="cpu", batch_size=2, **extra)
        lm.task_dict = docs
        answers[name] = (lm.generate_until(requests), lm.efficiency_rows)
    assert answers["zero"][0] == answers["off"][0]
    assert all(len(text) > 0 for text in answers["off"][0])
    kept = [row["visual_tokens_after"] for row in answers["default"][1]]
    assert kept < [row["visual_tokens_before"] for row in answers["default"][1]]
    assert [row["visual_tokens_after"] for row in answers["zero"][1]] == [row["visual_tokens_before"]
                                                                         for row in answers["zero"][1]]


def test_generate_until_pads_batches_and_cuts_at_until(in_task_folder):
    videos = [f"data/lightning_prune_tiny/video_{i}.mp4" for i in range(3)]
    contexts = ["Short?", "A much longer question about the red square and its way?", "Medium length question?"]
    results = {}
    for batch_size in (1, 3):
        requests, docs = video_requests(videos, contexts, {"max_new_tokens": 8, "until": []})
        lm = LightningPruneVideoLLM(config=str(TINY), device="cpu", batch_size=batch_size)
        lm.task_dict = docs
        results[batch_size] = lm.generate_until(requests)
    assert results[3] == results[1]  # left padding changes no answer
    full = results[1][0]
    assert len(full) >= 2
    stop = full[len(full) // 2]
    requests, docs = video_requests(videos[:1], contexts[:1], {"max_new_tokens": 8, "until": [stop]})
    lm = LightningPruneVideoLLM(config=str(TINY), device="cpu")
    lm.task_dict = docs
    assert lm.generate_until(requests) == [full.split(stop)[0]]


def test_generate_until_takes_pil_frames_sampled_like_videos(in_task_folder):
    frames = moving_shapes_frames(20, 32)
    images = [Image.fromarray(frame) for frame in frames]
    request = VideoRequest(0, "q", None, TASK, 0, load_frames=lambda: images)
    sampled = VideoRequestDataset([request], num_frames=4, sampling="truncate")[0]["videos"].numpy()
    np.testing.assert_array_equal(sampled, frames[np.linspace(0, 19, 4, dtype=int)])
    path = write_video(in_task_folder / "pil_check.mp4", frames)
    from_path = VideoRequestDataset([VideoRequest(0, "q", str(path), TASK, 0)], 4, "truncate")[0]["videos"]
    assert np.array_equal(from_path.numpy(), read_video_frames(path, 4).numpy())
    requests, docs = video_requests([images])
    lm = LightningPruneVideoLLM(config=str(TINY), device="cpu", num_frames=4)
    lm.task_dict = docs
    assert len(lm.generate_until(requests)) == 1
    assert lm.efficiency_rows[0]["visual_tokens_before"] == 4 * 16 + 1


def test_generate_until_names_an_undecodable_video_before_generating(in_task_folder, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 400)
    requests, docs = video_requests(["data/lightning_prune_tiny/video_0.mp4", str(broken)])
    lm = LightningPruneVideoLLM(config=str(TINY), device="cpu")
    lm.task_dict = docs
    with pytest.raises(ValueError, match=rf"task '{TASK}', doc 1: Video .*broken\.mp4 cannot be decoded"):
        lm.generate_until(requests)
    assert lm.efficiency_rows == []  # the good first video was not generated either
    requests, docs = video_requests([["not", "a video"]])
    lm.task_dict = docs
    with pytest.raises(ValueError, match=r"doc 0: `lightning_prune` takes one video per request .* got \['str', 'str'"):
        lm.generate_until(requests)


@pytest.mark.parametrize("kind", ["loglikelihood", "generate_until_multi_round"])
def test_unserved_request_types_name_what_is_served(kind):
    requests, _ = video_requests(["v.mp4"], task="videomme_choice", kind=kind)
    lm = LightningPruneVideoLLM(config=str(TINY), device="cpu")
    with pytest.raises(NotImplementedError, match=rf"`lightning_prune` serves generate_until requests \(one video.*"
                                                  rf"task\(s\) \['videomme_choice'\] ask for {kind}"):
        getattr(lm, kind)(requests)


def test_lmms_eval_model_args_string_reaches_our_checks():
    with pytest.raises(ValueError, match=r"must be among \[.*\], got unknown colour"):
        LightningPruneVideoLLM.create_from_arg_string(f"config={TINY},colour=red", {"batch_size": 1, "device": "cpu"})


@pytest.mark.slow  # lmms-eval's own CLI in a subprocess
def test_lmms_eval_command_line_runs_the_tiny_task_offline(in_task_folder):
    script = Path(sys.executable).with_name("lmms-eval")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "lmms_eval"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [*command, "--model", "lightning_prune", "--model_args", f"config={TINY},dycoke=true,report=out",
         "--tasks", TASK, "--include_path", str(REPO / "lightning_prune" / "evaluation" / "tasks"),
         "--limit", "2", "--device", "cpu", "--output_path", "out", "--log_samples", "--verbosity", "WARNING"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = [json.loads(path.read_text()) for path in (in_task_folder / "out").rglob("*_results.json")]
    assert len(results) == 1 and 0.0 <= results[0]["results"][TASK]["accuracy,none"] <= 1.0
    report = json.loads((in_task_folder / "out" / "lightning_prune_efficiency.json").read_text())
    assert len(report["samples"]) == 2 and report["summary"]["visual_tokens_kept_fraction"] < 1


def test_lmms_eval_command_line_exits_non_zero_on_our_errors(in_task_folder):
    """lmms-eval catches every Exception and exits 0: our errors must end the command with one line and status 1
    (one command-line case: each costs a whole lmms-eval start; the in-process checks cover the others)."""
    model_args = f"config={TINY},dycoke=true,K=1.5"  # K: the paper's name of merging_ratio
    script = Path(sys.executable).with_name("lmms-eval")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "lmms_eval"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [*command, "--model", "lightning_prune", "--model_args", model_args, "--tasks", TASK, "--include_path",
         str(REPO / "lightning_prune" / "evaluation" / "tasks"), "--limit", "1", "--device", "cpu",
         "--verbosity", "WARNING"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert completed.returncode == 1, completed.stderr[-3000:]
    last = completed.stderr.strip().splitlines()[-1]
    assert last == "lightning_prune: error: `merging_ratio` must be in [0, 1), got 1.5."
    assert "Traceback" not in completed.stderr
