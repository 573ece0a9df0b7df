"""The video-QA DataModule: PyAV decoding, uniform sampling, JSONL parsing, the generated moving-shapes dataset."""

import json

import numpy as np
import pytest

from lightning_prune.data.video_qa import (
    VideoQADataModule,
    check_video_readable,
    moving_shapes_frames,
    read_annotations,
    read_video_frames,
    uniform_frame_indices,
    write_synthetic_video_qa,
    write_video,
)


def test_uniform_frame_indices_spread_from_first_to_last_frame():
    assert uniform_frame_indices(10, 4) == [0, 3, 6, 9]
    assert uniform_frame_indices(100, 1) == [0]
    assert uniform_frame_indices(3, 5) == [0, 0, 1, 1, 2]  # a short video repeats frames (0, .5, 1, 1.5, 2)


def test_uniform_frame_indices_truncate_by_default_as_lmms_eval_does():
    # 30 frames, 5 wanted: the points are 0, 7.25, 14.5, 21.75, 29
    assert uniform_frame_indices(30, 5) == [0, 7, 14, 21, 29]
    assert uniform_frame_indices(30, 5, sampling="round") == [0, 7, 14, 22, 29]  # 14.5 rounds half to even
    for total in range(1, 120):
        for wanted in (1, 2, 7, 8, 16, 32):
            # independent reference: floor of the exact rational point i * (total - 1) / (wanted - 1)
            exact = [i * (total - 1) // (wanted - 1) if wanted > 1 else 0 for i in range(wanted)]
            assert uniform_frame_indices(total, wanted) == exact, (total, wanted)


def test_uniform_frame_indices_reject_bad_requests():
    with pytest.raises(ValueError, match="`num_frames` must be an integer >= 1, got 0"):
        uniform_frame_indices(10, 0)
    with pytest.raises(ValueError, match="`sampling` must be one of 'truncate', 'round', got 'nearest'"):
        uniform_frame_indices(10, 4, sampling="nearest")


def test_read_video_frames_returns_the_uniformly_sampled_frames(tmp_path):
    levels = [10 + 8 * t for t in range(30)]  # frame t is a flat grey of level 10 + 8t: survives lossy coding
    frames = np.stack([np.full((32, 48, 3), level, dtype=np.uint8) for level in levels])
    path = write_video(tmp_path / "grey.mp4", frames)
    decoded = read_video_frames(path, 5)
    assert decoded.shape == (5, 32, 48, 3) and str(decoded.dtype) == "torch.uint8"
    means = decoded.float().mean(dim=(1, 2, 3)).tolist()
    assert means == pytest.approx([levels[i] for i in (0, 7, 14, 21, 29)], abs=3)
    rounded = read_video_frames(path, 5, sampling="round").float().mean(dim=(1, 2, 3)).tolist()
    assert rounded == pytest.approx([levels[i] for i in (0, 7, 14, 22, 29)], abs=3)


def test_read_video_frames_reports_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="Video file not found"):
        read_video_frames(tmp_path / "nope.mp4", 4)


def test_check_video_readable_names_the_bad_file(tmp_path):
    good = write_video(tmp_path / "good.mp4", moving_shapes_frames(4, 32))
    check_video_readable(good)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 50)
    with pytest.raises(ValueError, match=r"Video .*garbage\.mp4 cannot be decoded"):
        check_video_readable(garbage)
    with pytest.raises(ValueError, match=r"Video file not found: .*missing\.mp4"):
        check_video_readable(tmp_path / "missing.mp4")


def test_moving_shapes_move_the_red_square_the_asked_way():
    frames = moving_shapes_frames(6, 64, "right")
    red = (frames[..., 0] > 200) & (frames[..., 1] < 60)
    centres = [np.argwhere(mask)[:, 1].mean() for mask in red]
    assert all(b > a for a, b in zip(centres, centres[1:], strict=False))
    with pytest.raises(ValueError, match=r"`direction` must be one of \['left', 'right', 'up', 'down'\], got 'in'"):
        moving_shapes_frames(2, 64, "in")


def test_read_annotations_accepts_letters_indices_and_option_texts(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [
        {"video": "a.mp4", "question": "q", "options": ["x", "y", "z"], "answer": "B"},
        {"video": "a.mp4", "question": "q", "options": ["x", "y", "z"], "answer": 2, "id": "three"},
        {"video": "a.mp4", "question": "q", "options": ["x", "y", "z"], "answer": "x"},
        {"video": "a.mp4", "question": "q", "options": ["x", "y", "z"], "answer": "(C)"},
    ]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n")
    records = read_annotations(path)
    assert [r["answer_index"] for r in records] == [1, 2, 0, 2]
    assert [r["id"] for r in records] == ["1", "three", "3", "4"]


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ({"video": "a", "question": "q", "options": ["x"]}, r"line 1: every record needs .* missing \['answer'\]"),
        ({"video": "a", "question": "q", "options": "xy", "answer": "A"}, r"`options` must be a list of 1 to 26"),
        ({"video": "a", "question": "q", "options": ["x", "y"], "answer": "C"}, r"`answer` must be an option letter"),
    ],
)
def test_read_annotations_rejects_bad_records(tmp_path, record, match):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=match):
        read_annotations(path)


def test_datamodule_generates_and_batches_the_synthetic_dataset(tmp_path):
    data = VideoQADataModule(generate_synthetic=True, synthetic_dir=str(tmp_path), num_frames=6, batch_size=2,
                             synthetic_samples=3, synthetic_video_frames=12)
    data.prepare_data()
    data.setup("predict")
    batches = list(data.predict_dataloader())
    assert [len(batch["id"]) for batch in batches] == [2, 1]
    first = batches[0]
    assert first["videos"][0].shape == (6, 64, 64, 3)
    assert first["answer_index"] == [0, 1] and first["options"][0] == ["left", "right", "up", "down"]
    assert len(list(data.test_dataloader())) == 2
    annotations = tmp_path / "samples3-frames12-size64" / "annotations.jsonl"
    written = annotations.read_text()
    data.prepare_data()  # a complete dataset is reused, not rewritten
    assert annotations.read_text() == written


def test_datamodule_keys_the_synthetic_folder_by_its_settings_under_the_data_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small = VideoQADataModule(generate_synthetic=True, root="videos", synthetic_samples=1, synthetic_video_frames=4,
                              synthetic_frame_size=32, num_frames=2)
    large = VideoQADataModule(generate_synthetic=True, root="videos", synthetic_samples=2, synthetic_video_frames=6,
                              synthetic_frame_size=32, num_frames=2)
    for data in (small, large):
        data.prepare_data()
        data.setup("predict")
    folders = sorted(p.name for p in (tmp_path / "videos" / "video_qa_synthetic").iterdir())
    assert folders == ["samples1-frames4-size32", "samples2-frames6-size32"]
    assert [len(small.dataset), len(large.dataset)] == [1, 2]  # neither reused the other's files
    assert large.dataset[1]["videos"].shape == (2, 32, 32, 3)


def test_datamodule_checks_every_video_at_setup_naming_the_file(tmp_path):
    annotations = write_synthetic_video_qa(tmp_path, samples=3, frames=4, size=32)
    (tmp_path / "video_2.mp4").write_bytes(b"\x00" * 500)  # the last video is broken: found before any batch runs
    data = VideoQADataModule(annotation_file=str(annotations), num_frames=2)
    with pytest.raises(ValueError, match=r"annotations\.jsonl, record 'synthetic-2': Video .*video_2\.mp4 cannot be"):
        data.setup("test")
    (tmp_path / "video_1.mp4").unlink()
    with pytest.raises(ValueError, match=r"record 'synthetic-1': Video file not found: .*video_1\.mp4"):
        data.setup("test")


def test_datamodule_frame_sampling_reaches_the_decoder(tmp_path):
    levels = [10 + 8 * t for t in range(30)]
    write_video(tmp_path / "grey.mp4", np.stack([np.full((32, 32, 3), level, dtype=np.uint8) for level in levels]))
    record = {"video": "grey.mp4", "question": "q", "options": ["x", "y"], "answer": "A"}
    (tmp_path / "qa.jsonl").write_text(json.dumps(record) + "\n")
    means = {}
    for sampling in ("truncate", "round"):
        data = VideoQADataModule(annotation_file=str(tmp_path / "qa.jsonl"), num_frames=5, frame_sampling=sampling)
        data.setup("test")
        means[sampling] = data.dataset[0]["videos"].float().mean(dim=(1, 2, 3))[3].item()
    assert means["truncate"] == pytest.approx(levels[21], abs=3)
    assert means["round"] == pytest.approx(levels[22], abs=3)
    with pytest.raises(ValueError, match="`frame_sampling` must be one of 'truncate', 'round', got 'floor'"):
        VideoQADataModule(annotation_file="qa.jsonl", frame_sampling="floor")


def test_datamodule_reads_videos_relative_to_a_given_root(tmp_path):
    annotations = write_synthetic_video_qa(tmp_path / "videos", samples=1, frames=4, size=32)
    moved = tmp_path / "qa.jsonl"
    moved.write_text(annotations.read_text())
    data = VideoQADataModule(annotation_file=str(moved), video_root=str(tmp_path / "videos"), num_frames=2)
    data.setup("test")
    assert next(iter(data.test_dataloader()))["videos"][0].shape == (2, 32, 32, 3)


def test_datamodule_requires_annotations_or_the_synthetic_dataset(tmp_path):
    with pytest.raises(ValueError, match="`annotation_file` must be given"):
        VideoQADataModule()
    with pytest.raises(ValueError, match="`num_frames` must be an integer >= 1, got 0"):
        VideoQADataModule(generate_synthetic=True, num_frames=0)
    data = VideoQADataModule(annotation_file=str(tmp_path / "missing.jsonl"))
    with pytest.raises(FileNotFoundError, match="Video-QA annotation file not found"):
        data.setup("predict")


def test_a_lossless_video_decodes_bit_for_bit_and_the_default_codec_does_not(tmp_path):
    from lightning_prune.data.synthetic_video import make_sample

    video, _ = make_sample(1, 4)  # a still square changing colour: what MPEG-4's predicted frames smear
    exact = read_video_frames(write_video(tmp_path / "exact.mp4", video, lossless=True), len(video)).numpy()
    np.testing.assert_array_equal(exact, video)
    lossy = read_video_frames(write_video(tmp_path / "lossy.mp4", video), len(video)).numpy()
    assert np.abs(lossy.astype(int) - video).max() > 10
