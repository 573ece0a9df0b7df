"""The video-QA DataModule: PyAV decoding, uniform sampling, JSONL parsing, the generated moving-shapes dataset."""

import json

import numpy as np
import pytest

from lightning_prune.data.video_qa import (
    VideoQADataModule,
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
    assert uniform_frame_indices(3, 5) == [0, 0, 1, 2, 2]  # a short video repeats frames


def test_uniform_frame_indices_reject_empty_requests():
    with pytest.raises(ValueError, match="`num_frames` must be an integer >= 1, got 0"):
        uniform_frame_indices(10, 0)


def test_read_video_frames_returns_the_uniformly_sampled_frames(tmp_path):
    levels = [10 + 8 * t for t in range(30)]  # frame t is a flat grey of level 10 + 8t: survives lossy coding
    frames = np.stack([np.full((32, 48, 3), level, dtype=np.uint8) for level in levels])
    path = write_video(tmp_path / "grey.mp4", frames)
    decoded = read_video_frames(path, 5)
    assert decoded.shape == (5, 32, 48, 3) and str(decoded.dtype) == "torch.uint8"
    means = decoded.float().mean(dim=(1, 2, 3)).tolist()
    expected = [levels[i] for i in (0, 7, 14, 22, 29)]
    assert means == pytest.approx(expected, abs=3)


def test_read_video_frames_reports_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="Video file not found"):
        read_video_frames(tmp_path / "nope.mp4", 4)


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
    written = (tmp_path / "annotations.jsonl").read_text()
    data.prepare_data()  # a complete dataset is reused, not rewritten
    assert (tmp_path / "annotations.jsonl").read_text() == written


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
