"""lmms-eval requests as video samples: checks before any generation, frames sampled like the DataModule's."""

import numpy as np
import pytest
import torch
from lmms_helpers import TASK, video_requests
from PIL import Image

from lightning_prune.data.video_qa import moving_shapes_frames, write_video
from lightning_prune.evaluation.efficiency import batch_rows, summarize, video_token_id
from lightning_prune.evaluation.video_requests import (
    VideoRequest,
    VideoRequestDataset,
    parse_request,
    truncate_at_stops,
)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return str(write_video(tmp_path_factory.mktemp("v") / "v.mp4", moving_shapes_frames(6, 32)))


def test_parse_request_reads_until_max_new_tokens_and_ignored_sampling(video):
    requests, docs = video_requests([video], gen_kwargs={"until": "\n", "max_new_tokens": 5, "temperature": 0.2,
                                                         "do_sample": False, "num_beams": 1})
    request, ignored = parse_request(3, requests[0].args, docs)
    assert (request.index, request.video, request.until, request.max_new_tokens) == (3, video, ["\n"], 5)
    assert request.load_frames is None
    assert ignored == ["temperature"]
    assert request.where == f"task '{TASK}', doc 0"


@pytest.mark.parametrize(
    ("gen_kwargs", "match"),
    [
        ({"until": 3}, r"doc 0: `until` must be a string or a list of strings, got 3"),
        ({"max_new_tokens": 0}, r"doc 0: `max_new_tokens` must be an integer >= 1, got 0"),
    ],
)
def test_parse_request_rejects_bad_generation_settings(video, gen_kwargs, match):
    requests, docs = video_requests([video], gen_kwargs=gen_kwargs)
    with pytest.raises(ValueError, match=match):
        parse_request(0, requests[0].args, docs)


def test_parse_request_rejects_other_argument_shapes_and_mixed_frame_sizes(video):
    with pytest.raises(ValueError, match=r"expects generate_until arguments \(context, gen_kwargs, doc_to_visual, "
                                         r"doc_id, task, split\), got 2 values"):
        parse_request(0, ("context", "continuation"), {})
    frames = [Image.new("RGB", (32, 32)), Image.new("RGB", (16, 32))]
    requests, docs = video_requests([frames])
    with pytest.raises(ValueError, match=r"doc 0: the PIL frames of a video must share one size"):
        parse_request(0, requests[0].args, docs)


def test_parse_request_loads_pil_frames_again_when_decoded_rather_than_keeping_them():
    calls = []

    def doc_to_visual(doc):
        calls.append(doc["doc"])
        return [Image.new("RGB", (16, 8), (10 * i, 0, 0)) for i in range(5)]

    args = ("ctx", {}, doc_to_visual, 0, TASK, "test")
    request, _ = parse_request(0, args, {TASK: {"test": [{"doc": "d0"}]}})
    assert request.video is None and calls == ["d0"]  # checked once, nothing kept
    frames = VideoRequestDataset([request], 3, "truncate")[0]["videos"]
    assert calls == ["d0", "d0"] and frames.shape == (3, 8, 16, 3)
    assert frames[:, 0, 0, 0].tolist() == [0, 20, 40]  # frames 0, 2, 4 of 5


def test_parse_request_names_a_file_without_a_video_stream(tmp_path):
    import av

    path = tmp_path / "sound.m4a"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    requests, docs = video_requests([str(path)])
    with pytest.raises(ValueError, match=r"doc 0: Video .*sound\.m4a cannot be decoded \(it has no video stream\)"):
        parse_request(0, requests[0].args, docs)


def test_dataset_names_a_video_that_vanished_after_the_check(tmp_path):
    request = VideoRequest(0, "q", str(tmp_path / "gone.mp4"), TASK, 7)
    with pytest.raises(ValueError, match=rf"task '{TASK}', doc 7: video .*gone\.mp4 cannot be decoded"):
        VideoRequestDataset([request], 4, "truncate")[0]


def test_dataset_gives_the_datamodules_batch_keys(video):
    sample = VideoRequestDataset([VideoRequest(5, "ctx", video, TASK, 0)], 3, "truncate")[0]
    assert sample["videos"].shape == (3, 32, 32, 3) and sample["videos"].dtype == torch.uint8
    assert (sample["question"], sample["options"], sample["id"]) == ("ctx", [], 5)


def test_truncate_at_stops_cuts_at_the_earliest_stop():
    assert truncate_at_stops("A. left\nB", ["\n"]) == "A. left"
    assert truncate_at_stops("xx STOP yy\nzz", ["\n", "STOP"]) == "xx "
    assert truncate_at_stops("no stop", []) == "no stop"


def test_video_token_id_refuses_a_model_without_video_tokens():
    class TextOnly(torch.nn.Module):
        config = type("Config", (), {"image_token_id": 3})()

    with pytest.raises(ValueError, match=r"The model TextOnly has no `video_token_id` in its config"):
        video_token_id(TextOnly())


def test_efficiency_rows_and_summary_by_hand():
    measured = {"visual_tokens_before": [257, 257], "prefill_s": 0.4, "decode_s_per_token": 0.02, "decode_steps": 3,
                "generate_s": 0.6, "peak_memory_mb": 100.0}
    rows = batch_rows(measured, 113.0, 2) + batch_rows({**measured, "visual_tokens_before": [101]}, None, 1)
    assert [(r["visual_tokens_before"], r["visual_tokens_after"], r["batch_size"]) for r in rows] == [
        (257, 113.0, 2), (257, 113.0, 2), (101, 101, 1)]
    summary = summarize(rows)
    assert summary["visual_tokens_before"] == pytest.approx((257 + 257 + 101) / 3)
    assert summary["visual_tokens_kept_fraction"] == pytest.approx((113 + 113 + 101) / (257 + 257 + 101))
    assert summary["generate_s_per_sample"] == pytest.approx((0.3 + 0.3 + 0.6) / 3)
    assert summarize([]) == {"samples": 0}
