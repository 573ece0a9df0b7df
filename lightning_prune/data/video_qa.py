"""Multiple-choice video question answering: a JSONL file of questions plus video files decoded with PyAV.

Each JSONL line is `{"video": PATH, "question": STR, "options": [STR, ...], "answer": LETTER | INDEX | OPTION_TEXT}`
with an optional `"id"`; `video` is relative to `video_root` (default: the JSONL's folder). Every video gives
`num_frames` frames sampled uniformly over its length, by default as lmms-eval's video wrappers (and the published
DyCoke code) pick them, so `predict`/`test` and an lmms-eval run see the same frames. Every video is checked at
`setup`, so a bad file stops the run before any batch. With `generate_synthetic: true` and no annotation file, a small
dataset of moving-shapes videos (written with PyAV) is created once, in a folder named after its settings under
`synthetic_dir` (default `<root>/video_qa_synthetic`), so a config runs offline.

Batches are dicts of lists: `videos` (uint8 `[F, H, W, 3]` each), `question`, `options`, `answer_index`, `id`, `kind`
(a record's optional `kind`, "" when absent).
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from lightning_prune._checks import is_int
from lightning_prune._files import jsonl_records, write_atomic
from lightning_prune.data._common import check_at_least, check_choice

_SYNTHETIC_QUESTION = "Which way does the red square move?"
_SYNTHETIC_OPTIONS = ["left", "right", "up", "down"]
_SYNTHETIC_STEPS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def _truncated_linspace(total_frames: int, num_frames: int) -> np.ndarray:
    # lmms-eval's wrappers and the published DyCoke code: `np.linspace(..., dtype=int)` truncates towards zero
    return np.linspace(0, total_frames - 1, num_frames, dtype=int)


def _rounded_linspace(total_frames: int, num_frames: int) -> np.ndarray:
    # this project's sampler before it matched lmms-eval (round half to even)
    return np.linspace(0, total_frames - 1, num_frames).round().astype(int)


FRAME_SAMPLERS: dict[str, Callable[[int, int], np.ndarray]] = {
    "truncate": _truncated_linspace,
    "round": _rounded_linspace,
}
FrameSampling = Literal["truncate", "round"]


def uniform_frame_indices(total_frames: int, num_frames: int, sampling: FrameSampling = "truncate") -> list[int]:
    """`num_frames` indices spread evenly from the first to the last frame (repeats when the video is shorter).

    Args:
        total_frames: frames in the video (>= 1).
        num_frames: frames wanted (>= 1).
        sampling: "truncate" (default) takes `np.linspace(0, total_frames - 1, num_frames, dtype=int)` as lmms-eval
            does; "round" rounds the same points to the nearest frame instead.
    """
    check_at_least("total_frames", total_frames, 1)
    check_at_least("num_frames", num_frames, 1)
    check_choice("sampling", sampling, tuple(FRAME_SAMPLERS))
    return FRAME_SAMPLERS[sampling](total_frames, num_frames).tolist()


def _frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        total = container.streams.video[0].frames
    if total <= 0:  # the container does not record a frame count: count by decoding
        with av.open(str(path)) as container:
            total = sum(1 for _ in container.decode(video=0))
    return total


def read_video_frames(path: str | Path, num_frames: int, sampling: FrameSampling = "truncate") -> torch.Tensor:
    """Decode `num_frames` uniformly sampled RGB frames.

    Args:
        path: a video file PyAV can open.
        num_frames: frames to return.
        sampling: how the frame indices are picked (see `uniform_frame_indices`).

    Returns:
        uint8 `[num_frames, H, W, 3]`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Video file not found: {path}.")
    wanted = uniform_frame_indices(_frame_count(path), num_frames, sampling)
    picked: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                picked[index] = frame.to_ndarray(format="rgb24")
            if index >= wanted[-1]:
                break
    if not picked:
        raise ValueError(f"No frame could be decoded from {path}.")
    last = picked[max(picked)]  # a recorded frame count can exceed what decodes: reuse the last decoded frame
    return torch.from_numpy(np.stack([picked.get(index, last) for index in wanted]))


def check_video_readable(path: str | Path) -> None:
    """Raise `ValueError` naming `path` unless it is a file PyAV opens, with a video stream whose first frame decodes.

    Cheap (one frame), so a whole dataset can be checked before any batch runs.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Video file not found: {path}.")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("it has no video stream")
            next(container.decode(video=0))
    except (av.FFmpegError, ValueError, StopIteration) as error:
        reason = str(error) or "no frame decodes"
        raise ValueError(f"Video {path} cannot be decoded ({reason}); re-encode or remove it.") from error


def moving_shapes_frames(num_frames: int, size: int, direction: str = "right", seed: int = 0) -> np.ndarray:
    """Frames of a red square crossing a textured background in `direction`, with a blue square drifting slowly.

    Args:
        num_frames: frames to draw.
        size: frame height and width in pixels (a multiple of 16 keeps codecs happy).
        direction: one of "left", "right", "up", "down".
        seed: seed of the background texture.

    Returns:
        uint8 `[num_frames, size, size, 3]`.
    """
    if direction not in _SYNTHETIC_STEPS:
        raise ValueError(f"`direction` must be one of {list(_SYNTHETIC_STEPS)}, got {direction!r}.")
    rng = np.random.default_rng(seed)
    background = (rng.integers(0, 60, (size // 8, size // 8, 3)).repeat(8, 0).repeat(8, 1) + 40).astype(np.uint8)
    side = max(size // 6, 2)
    step_x, step_y = _SYNTHETIC_STEPS[direction]
    frames = np.repeat(background[None], num_frames, axis=0)
    for t in range(num_frames):
        progress = t / max(num_frames - 1, 1)
        center = size // 2 - side // 2
        x = int(center + step_x * (progress - 0.5) * (size - side))
        y = int(center + step_y * (progress - 0.5) * (size - side))
        frames[t, y : y + side, x : x + side] = (230, 30, 30)
        blue = int(progress * (size - side) * 0.25)
        frames[t, blue : blue + side, 2 : 2 + side] = (30, 30, 230)
    return frames


def write_video(path: str | Path, frames: np.ndarray, fps: int = 8, lossless: bool = False) -> Path:
    """Write uint8 `[T, H, W, 3]` RGB frames as an MP4 video with PyAV.

    Args:
        path: the file (`.mp4`).
        frames: the RGB frames.
        fps: frames per second.
        lossless: H.264 in RGB at quantiser 0 (`libx264rgb`), decoded back bit for bit; else MPEG-4 Part 2 in YUV
            4:2:0, as most videos are. Questions about exact colours need lossless: MPEG-4's predicted frames shift a
            still square's colour by ~20 levels every other frame, which a model reads as a colour change.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264rgb" if lossless else "mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "rgb24" if lossless else "yuv420p"
        stream.options = {"qp": "0"} if lossless else {"qscale": "2"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_synthetic_video_qa(folder: str | Path, samples: int = 2, frames: int = 32, size: int = 64) -> Path:
    """Create `annotations.jsonl` and one moving-shapes video per sample in `folder`; returns the JSONL path."""
    folder = Path(folder)
    lines = []
    for index in range(samples):
        direction = _SYNTHETIC_OPTIONS[index % len(_SYNTHETIC_OPTIONS)]
        write_video(folder / f"video_{index}.mp4", moving_shapes_frames(frames, size, direction, seed=index))
        lines.append({"id": f"synthetic-{index}", "video": f"video_{index}.mp4", "question": _SYNTHETIC_QUESTION,
                      "options": _SYNTHETIC_OPTIONS, "answer": string.ascii_uppercase[index % 4]})
    annotations = folder / "annotations.jsonl"
    # Written last and atomically, so its presence means the dataset is complete.
    write_atomic(annotations, "".join(json.dumps(line) + "\n" for line in lines))
    return annotations


def _answer_index(answer: Any, options: list[str], where: str) -> int:
    if is_int(answer, 0) and answer < len(options):
        return answer
    if isinstance(answer, str):
        letter = answer.strip().strip("().").upper()
        if len(letter) == 1 and letter in string.ascii_uppercase[: len(options)]:
            return string.ascii_uppercase.index(letter)
        if answer in options:
            return options.index(answer)
    raise ValueError(
        f"{where}: `answer` must be an option letter (A-{string.ascii_uppercase[len(options) - 1]}), an index below "
        f"{len(options)} or one of the options, got {answer!r}."
    )


def read_annotations(path: str | Path) -> list[dict[str, Any]]:
    """Parse and check a video-QA JSONL file; adds `answer_index` and a default `id` to every record."""
    records = []
    for number, record in jsonl_records(Path(path), Path(path).read_text(), "annotation_file"):
        where = f"{path}, line {number}"
        missing = [key for key in ("video", "question", "options", "answer") if key not in record]
        if missing:
            raise ValueError(f"{where}: every record needs video, question, options and answer; missing {missing}.")
        if not isinstance(record["options"], list) or not 1 <= len(record["options"]) <= 26:
            raise ValueError(f"{where}: `options` must be a list of 1 to 26 strings, got {record['options']!r}.")
        record["answer_index"] = _answer_index(record["answer"], record["options"], where)
        record.setdefault("id", str(number))
        records.append(record)
    return records


def check_record_videos(records: list[dict[str, Any]], video_root: Path, annotation_file: Path) -> None:
    """Check every record's video is readable; the error names the annotation file, the record's id and the video."""
    for record in records:
        try:
            check_video_readable(video_root / record["video"])
        except ValueError as error:
            raise ValueError(f"{annotation_file}, record {record['id']!r}: {error}") from None


class VideoQADataset(Dataset):
    """Records of a video-QA JSONL file with their videos' frames decoded on access."""

    def __init__(
        self, records: list[dict[str, Any]], video_root: Path, num_frames: int, sampling: FrameSampling = "truncate"
    ):
        self.records, self.video_root, self.num_frames, self.sampling = records, video_root, num_frames, sampling

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        frames = read_video_frames(self.video_root / record["video"], self.num_frames, self.sampling)
        return {"videos": frames, **{key: record[key] for key in ("id", "question", "options", "answer_index")},
                "kind": record.get("kind", "")}  # the question kind of synthetic sets (per-kind accuracy)


def collate_video_qa(samples: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Keep every field as a list (videos may differ in size; the model's processor resizes them)."""
    return {key: [sample[key] for sample in samples] for key in samples[0]}


class VideoQADataModule(LightningDataModule):
    """Multiple-choice video QA for `predict` and `test`.

    Args:
        annotation_file: the JSONL file; may be omitted with `generate_synthetic`.
        video_root: folder the `video` paths are relative to (default: the JSONL's folder).
        num_frames: F, frames sampled uniformly from every video.
        frame_sampling: "truncate" picks `np.linspace(0, total - 1, F, dtype=int)` as lmms-eval does; "round"
            rounds the same points (this project's sampler before it matched lmms-eval).
        batch_size: samples per batch.
        num_workers: DataLoader workers.
        root: the data folder; the synthetic dataset goes under it by default.
        generate_synthetic: without `annotation_file`, create (once) and use a moving-shapes dataset.
        synthetic_dir: the folder of synthetic datasets (default `<root>/video_qa_synthetic`); each set of settings
            gets its own subfolder, e.g. `samples2-frames32-size64`, so different settings never share files.
        synthetic_samples: videos in it.
        synthetic_video_frames: frames per synthetic video.
        synthetic_frame_size: pixels per side of the synthetic frames.
    """

    def __init__(
        self,
        annotation_file: str | None = None,
        video_root: str | None = None,
        num_frames: int = 32,
        frame_sampling: FrameSampling = "truncate",
        batch_size: int = 1,
        num_workers: int = 0,
        root: str = "data",
        generate_synthetic: bool = False,
        synthetic_dir: str | None = None,
        synthetic_samples: int = 2,
        synthetic_video_frames: int = 32,
        synthetic_frame_size: int = 64,
    ) -> None:
        super().__init__()
        if annotation_file is None and not generate_synthetic:
            raise ValueError("`annotation_file` must be given (a JSONL path) unless `generate_synthetic` is true.")
        check_at_least("num_frames", num_frames, 1)
        check_choice("frame_sampling", frame_sampling, tuple(FRAME_SAMPLERS))
        check_at_least("batch_size", batch_size, 1)
        check_at_least("num_workers", num_workers, 0)
        check_at_least("synthetic_samples", synthetic_samples, 1)
        check_at_least("synthetic_video_frames", synthetic_video_frames, 1)
        check_at_least("synthetic_frame_size", synthetic_frame_size, 16)
        self.save_hyperparameters()
        synthetic_key = f"samples{synthetic_samples}-frames{synthetic_video_frames}-size{synthetic_frame_size}"
        synthetic = Path(synthetic_dir or Path(root) / "video_qa_synthetic") / synthetic_key
        self.annotation_file = Path(annotation_file) if annotation_file else synthetic / "annotations.jsonl"
        self.video_root = Path(video_root) if video_root else self.annotation_file.parent
        self.dataset: VideoQADataset | None = None

    @override
    def prepare_data(self) -> None:
        hp = self.hparams
        if hp.generate_synthetic and hp.annotation_file is None and not self.annotation_file.is_file():
            write_synthetic_video_qa(
                self.annotation_file.parent, hp.synthetic_samples, hp.synthetic_video_frames, hp.synthetic_frame_size
            )

    @override
    def setup(self, stage: str) -> None:
        if not self.annotation_file.is_file():
            raise FileNotFoundError(
                f"Video-QA annotation file not found: {self.annotation_file}. Point `annotation_file` at a JSONL file "
                "or set `generate_synthetic: true`."
            )
        records = read_annotations(self.annotation_file)
        check_record_videos(records, self.video_root, self.annotation_file)  # a bad file fails now, not mid-run
        self.dataset = VideoQADataset(records, self.video_root, self.hparams.num_frames, self.hparams.frame_sampling)

    def _loader(self) -> DataLoader:
        return DataLoader(
            self.dataset,
            batch_size=self.hparams.batch_size,
            shuffle=False,
            num_workers=self.hparams.num_workers,
            collate_fn=collate_video_qa,
        )

    @override
    def predict_dataloader(self) -> DataLoader:
        return self._loader()

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader()
