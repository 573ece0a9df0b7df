"""The synthetic temporal video-QA generator: seeded, every answer read back from the pixels, bad input refused."""

import json
import string

import numpy as np
import pytest

from lightning_prune.data.synthetic_video import (
    COLOURS,
    GENERATOR_VERSION,
    KINDS,
    check_generator_args,
    main,
    make_sample,
    write_split,
)
from lightning_prune.data.video_qa import read_annotations, read_video_frames

PALETTE = np.array(list(COLOURS.values()))


def _colour_at(pixels: np.ndarray) -> int | None:
    """Index of the palette colour within 30 of every channel of `pixels` (`[..., 3]` averaged), else None."""
    mean = pixels.reshape(-1, 3).mean(0)
    close = np.abs(PALETTE - mean).max(1) < 30
    return int(close.argmax()) if close.any() else None


def _object_pixels(frame: np.ndarray) -> np.ndarray:
    """`[K, 2]` (y, x) of the pixels brighter than the background."""
    return np.argwhere(frame.max(-1) > 80)


def _answer_from_pixels(kind: str, video: np.ndarray, options: list[str]) -> int:
    """Re-derive the answer of a sample from its frames alone (an independent reading of the videos)."""
    if kind == "appearance":
        return _colour_at(video[0][tuple(_object_pixels(video[0]).T)])
    if kind == "flash":
        frame = next(f for f in video if _object_pixels(f).shape[0] > 0.9 * f.shape[0] * f.shape[1])
        return _colour_at(frame)
    if kind == "motion":
        centres = [_object_pixels(f).mean(0) for f in (video[0], video[-1])]
        dy, dx = centres[1] - centres[0]
        size = video.shape[1]
        horizontal = abs(dx) > abs(dy)
        assert options[0].startswith("left" if horizontal else "up")
        step = dx if horizontal else dy
        return 2 * int(step > 0) + int(abs(step) > size / 3)
    if kind == "order":
        for frame in video:
            found = _object_pixels(frame)
            if len(found):
                return _colour_at(frame[tuple(found.T)])
    if kind == "counting":
        colours = [_colour_at(f[tuple(_object_pixels(f).T)]) for f in video]
        return sum(a != b for a, b in zip(colours, colours[1:], strict=False))
    raise AssertionError(kind)


def test_make_sample_is_seeded_and_samples_differ():
    first, record = make_sample(7, 3)
    again, same = make_sample(7, 3)
    other, _ = make_sample(8, 3)
    assert np.array_equal(first, again) and record == same
    assert not np.array_equal(first, other)
    assert first.shape == (16, 32, 32, 3) and first.dtype == np.uint8


@pytest.mark.parametrize("index", range(40))
def test_every_answer_can_be_read_back_from_the_frames(index):
    video, record = make_sample(11, index, frames=16, size=32)
    assert record["kind"] == KINDS[index % 5]
    assert len(record["options"]) == 4 and record["answer"] in "ABCD"
    expected = _answer_from_pixels(record["kind"], video, record["options"])
    assert string.ascii_uppercase[expected] == record["answer"]


def test_flash_lasts_one_or_two_frames_and_counting_changes_on_even_frames():
    for index in range(3, 200, 5):  # flash samples
        video, _ = make_sample(5, index)
        flashing = [t for t, f in enumerate(video) if _object_pixels(f).shape[0] > 0.9 * 32 * 32]
        assert 1 <= len(flashing) <= 2 and flashing == list(range(flashing[0], flashing[0] + len(flashing)))
    for index in range(4, 200, 5):  # counting samples
        video, _ = make_sample(5, index)
        colours = [_colour_at(f[tuple(_object_pixels(f).T)]) for f in video]
        changes = [t for t in range(1, 16) if colours[t] != colours[t - 1]]
        assert all(t % 2 == 0 for t in changes)


def test_answers_are_spread_over_the_letters():
    letters = [make_sample(2, index)[1]["answer"] for index in range(200)]
    counts = [letters.count(letter) for letter in "ABCD"]
    assert min(counts) >= 30  # 200 questions: none of the letters is rare


def test_write_split_writes_videos_and_a_jsonl_that_video_qa_reads(tmp_path):
    annotations = write_split(tmp_path / "split", seed=4, samples=5, frames=16, size=32)
    records = read_annotations(annotations)
    assert [r["kind"] for r in records] == list(KINDS)
    for index, record in enumerate(records):
        frames = read_video_frames(annotations.parent / record["video"], 16).numpy()
        video, expected = make_sample(4, index)
        assert record["answer"] == expected["answer"] and record["id"] == f"s4-{index}"
        np.testing.assert_array_equal(frames, video)  # lossless: the colours a counting question compares are exact
    assert not list(annotations.parent.glob("*.tmp"))


def test_cli_writes_the_same_split_as_python(tmp_path, capsys):
    main(["--seed", "4", "--samples", "3", "--frames", "16", "--size", "32", "--out", str(tmp_path / "cli")])
    assert "annotations.jsonl" in capsys.readouterr().out
    python = write_split(tmp_path / "py", seed=4, samples=3, frames=16, size=32)
    assert (tmp_path / "cli" / "annotations.jsonl").read_text() == python.read_text()
    assert json.loads(python.read_text().splitlines()[0])["video"] == "video_0.mp4"


def test_generator_refuses_bad_arguments_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"`samples` must be an integer >= 1, got 0"):
        write_split(tmp_path / "out", seed=0, samples=0)
    with pytest.raises(ValueError, match=r"`frames` must be even \(colour changes fall on even frames; qwen2_5_vl's "
                                         r"temporal patch is 2 frames\), got 15"):
        check_generator_args(4, 15, 32, "qwen2_5_vl")
    with pytest.raises(ValueError, match=r"`size` must be a multiple of 8 \(what qwen2_5_vl's tiny vision tower takes "
                                         r"without resizing.*got 36"):
        check_generator_args(4, 16, 36, "qwen2_5_vl")
    with pytest.raises(ValueError, match=r"`frames` must be an integer >= 8, got 4"):
        check_generator_args(4, 4, 32)
    with pytest.raises(ValueError, match=r"`family` must be one of \['llava_onevision'"):
        check_generator_args(4, 16, 32, "gemma3")
    assert not (tmp_path / "out").exists()


def test_cli_reports_bad_arguments_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--seed", "0", "--samples", "0", "--out", str(tmp_path)])
    assert "`samples` must be an integer >= 1, got 0." in capsys.readouterr().err


def test_datamodule_writes_each_split_once_from_its_seed_and_batches_the_kinds(tmp_path):
    from lightning_prune.data.synthetic_video_qa import SyntheticVideoQADataModule, split_batches

    data = SyntheticVideoQADataModule(root=str(tmp_path), train_samples=6, val_samples=5, test_samples=7,
                                      batch_size=3, eval_batch_size=5, test_limit=5)
    (test,) = split_batches(data, "test")
    assert test["kind"] == list(KINDS) and test["id"] == [f"s3-{i}" for i in range(5)]
    assert test["answer_index"] == ["ABCD".index(make_sample(3, i)[1]["answer"]) for i in range(5)]
    assert test["videos"][0].shape == (16, 32, 32, 3)
    train = split_batches(data, "train")
    assert sorted(i for batch in train for i in batch["id"]) == sorted(f"s1-{i}" for i in range(6))
    folders = {path.name for path in (tmp_path / "synthetic_video_qa").iterdir()}
    assert folders == {f"seed{seed}-samples{count}-frames16-size32-v{GENERATOR_VERSION}"
                       for seed, count in ((1, 6), (2, 5), (3, 7))}  # a new generator version never reads a stale split


def test_datamodule_refuses_shared_seeds_and_bad_geometry(tmp_path):
    from lightning_prune.data.synthetic_video_qa import SyntheticVideoQADataModule

    with pytest.raises(ValueError, match=r"`train_seed`, `val_seed` and `test_seed` must differ"):
        SyntheticVideoQADataModule(root=str(tmp_path), val_seed=1)
    with pytest.raises(ValueError, match=r"`size` must be a multiple of 8"):
        SyntheticVideoQADataModule(root=str(tmp_path), frame_size=36, family="qwen2_5_vl")


def test_a_kind_warmup_draws_its_epochs_from_those_kinds_then_every_kind(tmp_path):
    from lightning_prune.data.synthetic_video_qa import KindCurriculumSampler, SyntheticVideoQADataModule

    data = SyntheticVideoQADataModule(root=str(tmp_path), num_frames=8, frame_size=16, train_samples=12,
                                      val_samples=1, test_samples=1, batch_size=4, warmup_kinds=["motion", "flash"],
                                      warmup_epochs=2)
    data.prepare_data()
    data.setup("fit")
    sampler = data.train_dataloader().sampler
    assert isinstance(sampler, KindCurriculumSampler)
    kinds = [record["kind"] for record in data.datasets["train"].records]
    warm = {index for index, kind in enumerate(kinds) if kind in ("motion", "flash")}
    assert len(warm) == 5  # 12 samples cycle through 5 kinds: motion at 1, 6, 11 and flash at 3, 8
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
    for order in epochs[:2]:
        assert len(order) == 12 and set(order) == warm  # the usual length, from the warm-up kinds only
        assert sorted(order[:5]) == sorted(warm)  # a full permutation before any sample repeats
    assert sorted(epochs[2]) == list(range(12))  # then every sample once
    assert epochs[0] != epochs[1]
    sampler.set_epoch(1)
    assert list(sampler) == epochs[1]  # a resumed fit sees the uninterrupted order


def test_kind_weights_draw_a_kind_that_many_times_as_often_after_the_warmup(tmp_path):
    from collections import Counter

    from lightning_prune.data._common import EpochRandomSampler
    from lightning_prune.data.synthetic_video_qa import SyntheticVideoQADataModule

    def sampler(**kwargs):
        data = SyntheticVideoQADataModule(root=str(tmp_path), num_frames=8, frame_size=16, train_samples=50,
                                          val_samples=1, test_samples=1, batch_size=4, **kwargs)
        data.prepare_data()
        data.setup("fit")
        return data.train_dataloader().sampler, [record["kind"] for record in data.datasets["train"].records]

    weighted, kinds = sampler(kind_weights={"counting": 3}, warmup_kinds=["motion"], warmup_epochs=1)
    plain, _ = sampler(shuffle_seed=0)
    draws = Counter()
    for epoch in range(1, 201):
        weighted.set_epoch(epoch)
        order = list(weighted)
        assert len(order) == 50 and len(set(order)) > 1
        draws.update(kinds[index] for index in order)
    # 10 samples per kind: a pool of 40 others + 30 counting, cut to 50 draws an epoch
    assert abs(draws["counting"] / draws["motion"] - 3) < 0.15
    weighted.set_epoch(0)
    assert {kinds[index] for index in weighted} == {"motion"}  # the warm-up comes first
    weighted.set_epoch(7)
    first = list(weighted)
    weighted.set_epoch(7)
    assert list(weighted) == first  # a resumed fit sees the uninterrupted order
    same, _ = sampler(kind_weights={"counting": 1})
    plain.set_epoch(4)
    same.set_epoch(4)
    assert type(plain) is EpochRandomSampler and list(same) == list(plain)  # weights of 1: the plain order
    with pytest.raises(ValueError, match=r"`kind_weights` maps question kinds of .*got 'speed': 2"):
        SyntheticVideoQADataModule(root=str(tmp_path), kind_weights={"speed": 2})
    with pytest.raises(ValueError, match=r"`kind_weights` .*got 'counting': 0"):
        SyntheticVideoQADataModule(root=str(tmp_path), kind_weights={"counting": 0})


def test_a_kind_warmup_refuses_unknown_or_missing_kinds(tmp_path):
    from lightning_prune.data.synthetic_video_qa import SyntheticVideoQADataModule

    with pytest.raises(ValueError, match=r"`warmup_kinds` must be a non-empty list of .*got \['speed'\]"):
        SyntheticVideoQADataModule(root=str(tmp_path), warmup_kinds=["speed"], warmup_epochs=1)
    with pytest.raises(ValueError, match=r"`warmup_kinds` must be a non-empty list .*got None \(warmup_epochs=1\)"):
        SyntheticVideoQADataModule(root=str(tmp_path), warmup_epochs=1)
    with pytest.raises(ValueError, match="warmup_epochs"):
        SyntheticVideoQADataModule(root=str(tmp_path), warmup_kinds=["motion"], warmup_epochs=-1)
