"""A seeded synthetic video-QA generator whose answers depend on time: what the tiny trained video LLMs learn.

    python -m lightning_prune.data.synthetic_video --seed 3 --samples 200 --frames 16 --size 32 --out data/test

writes `annotations.jsonl` (the format `VideoQADataModule` reads, plus `kind`) and one lossless H.264 MP4 per sample
(PyAV; decoded back bit for bit, see `write_video`). Samples cycle through five question kinds, each needing a
different part of the video:

- `appearance`: the colour of a square that moves through the whole clip;
- `motion`: which way (left/right or up/down) and how fast (slowly: a third of the frame; quickly: edge to edge);
- `order`: which of two squares appeared first (both are visible at the end);
- `flash`: the colour of a full-frame flash lasting one or two frames (what temporal merging can lose);
- `counting`: how many times (0 to 3) a still square changes colour.

Every question has four options in a fixed order per kind and a letter answer. Sample `i` of seed `S` is drawn from
`numpy.random.default_rng([S, i])` alone, so a split is the same on every machine and any sample can be rebuilt;
train, validation and test splits use different seeds. Colour changes and appearances fall on even frames (the
Qwen families' temporal patch is 2 frames); a flash may start on any frame.
"""

from __future__ import annotations

import argparse
import json
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lightning_prune._checks import check_int
from lightning_prune._files import write_atomic

# Bumped whenever a seed's videos change (2: lossless H.264 instead of MPEG-4), so no cached split is reused stale.
GENERATOR_VERSION = 2
KINDS = ("appearance", "motion", "order", "flash", "counting")
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 235), "yellow": (235, 215, 40)}
COLOUR_NAMES = tuple(COLOURS)
QUESTIONS = {
    "appearance": "What colour is the moving square?",
    "motion": "Which way and how fast does the square move?",
    "order": "Which colour appears first?",
    "flash": "What colour is the brief flash?",
    "counting": "How many times does the square change colour?",
}
COUNT_OPTIONS = ("0", "1", "2", "3")
_BACKGROUND = 24
_WHITE = (200, 200, 200)
# The tiny vision towers' geometry per family: (temporal patch in frames, frame side multiple: patch x merge for Qwen).
FAMILY_GEOMETRY = {"llava_onevision": (1, 4), "llava_next_video": (1, 4), "qwen2_5_vl": (2, 8), "qwen3_vl": (2, 8)}
MIN_FRAMES, MIN_SIZE = 8, 16


def check_generator_args(samples: int, frames: int, size: int, family: str | None = None) -> None:
    """Raise `ValueError` (one message, every problem) unless the generator can make these videos for `family`."""
    problems = []
    for name, value, minimum in (("samples", samples, 1), ("frames", frames, MIN_FRAMES), ("size", size, MIN_SIZE)):
        try:
            check_int(name, value, minimum)
        except ValueError as error:
            problems.append(str(error))
    if family is not None and family not in FAMILY_GEOMETRY:
        problems.append(f"`family` must be one of {list(FAMILY_GEOMETRY)} or None, got {family!r}.")
    elif not problems:
        temporal, multiple = FAMILY_GEOMETRY.get(family, (2, 2))
        if frames % 2 or frames % temporal:
            patch = f"; {family}'s temporal patch is {temporal} frames" if family else ""
            problems.append(f"`frames` must be even (colour changes fall on even frames{patch}), got {frames}.")
        if size % multiple:
            problems.append(f"`size` must be a multiple of {multiple} (what {family or 'a video'}'s tiny vision tower "
                            f"takes without resizing: its patch size times its spatial merge), got {size}.")
    if problems:
        raise ValueError(" ".join(problems))


def _blank(frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    noise = rng.integers(-6, 7, (1, size, size, 3))
    return np.clip(_BACKGROUND + noise, 0, 255).repeat(frames, 0).astype(np.int16)


def _paint(video: np.ndarray, t: int | slice, x: int, y: int, side: int, colour: tuple[int, int, int]) -> None:
    video[t, y : y + side, x : x + side] = colour


def _side(size: int) -> int:
    return max(size * 3 // 8, 4)  # 12 of 32 pixels: a ninth of the frame, several tokens per frame


def _linear_track(frames: int, size: int, side: int, rng: np.random.Generator, fast: bool, axis: int, sign: int):
    """Per-frame (x, y) of a square moving along `axis` (0: x, 1: y) in direction `sign`, a third or all the way."""
    span = size - side
    distance = span if fast else span // 3
    start = rng.integers(0, span - distance + 1)
    if sign < 0:
        start = start + distance
    other = int(rng.integers(0, span + 1))
    steps = np.rint(start + sign * distance * np.arange(frames) / (frames - 1)).astype(int)
    return [(int(s), other) if axis == 0 else (other, int(s)) for s in steps]


def _random_track(frames: int, size: int, side: int, rng: np.random.Generator):
    """A track of random speed, axis and direction (drawn in that order)."""
    fast, axis = bool(rng.integers(2)), int(rng.integers(2))
    return _linear_track(frames, size, side, rng, fast, axis, int(rng.choice([-1, 1])))


def _appearance(frames, size, rng):
    side, colour = _side(size), int(rng.integers(4))
    track = _random_track(frames, size, side, rng)
    video = _blank(frames, size, rng)
    for t, (x, y) in enumerate(track):
        _paint(video, t, x, y, side, COLOURS[COLOUR_NAMES[colour]])
    return video, list(COLOUR_NAMES), colour


def _motion(frames, size, rng):
    side, colour = _side(size), COLOUR_NAMES[int(rng.integers(4))]
    axis, positive, fast = int(rng.integers(2)), int(rng.integers(2)), int(rng.integers(2))
    track = _linear_track(frames, size, side, rng, bool(fast), axis, 1 if positive else -1)
    video = _blank(frames, size, rng)
    for t, (x, y) in enumerate(track):
        _paint(video, t, x, y, side, COLOURS[colour])
    words = ("left", "right") if axis == 0 else ("up", "down")
    options = [f"{word}, {speed}" for word in words for speed in ("slowly", "quickly")]
    return video, options, 2 * positive + fast


def _two_places(size: int, side: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Two non-overlapping square positions (opposite halves of the frame)."""
    half = size // 2
    a = (int(rng.integers(0, half - side + 1)), int(rng.integers(0, size - side + 1)))
    b = (int(rng.integers(half, size - side + 1)), int(rng.integers(0, size - side + 1)))
    return [a, b] if rng.integers(2) else [b, a]


def _order(frames, size, rng):
    side = _side(size)
    first, second = (int(c) for c in rng.choice(4, 2, replace=False))
    start = 2 * int(rng.integers(0, frames // 8 + 1))
    later = 2 * int(rng.integers(start // 2 + 2, (3 * frames // 4) // 2 + 1))
    places = _two_places(size, side, rng)
    video = _blank(frames, size, rng)
    _paint(video, slice(start, None), *places[0], side, COLOURS[COLOUR_NAMES[first]])
    _paint(video, slice(later, None), *places[1], side, COLOURS[COLOUR_NAMES[second]])
    return video, list(COLOUR_NAMES), first


def _flash(frames, size, rng):
    side, colour = _side(size), int(rng.integers(4))
    track = _random_track(frames, size, side, rng)
    video = _blank(frames, size, rng)
    for t, (x, y) in enumerate(track):
        _paint(video, t, x, y, side, _WHITE)
    start, length = int(rng.integers(1, frames - 2)), int(rng.integers(1, 3))
    video[start : start + length] = COLOURS[COLOUR_NAMES[colour]]
    return video, list(COLOUR_NAMES), colour


def _counting(frames, size, rng):
    side, changes = _side(size), int(rng.integers(4))
    # change points on even frames, at least 2 frames apart (each colour lasts a temporal patch or more)
    boundaries = sorted(2 * int(b) for b in rng.choice(np.arange(1, frames // 2), changes, replace=False))
    colours = [int(rng.integers(4))]
    for _ in range(changes):
        colours.append(int(rng.choice([c for c in range(4) if c != colours[-1]])))
    x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
    video = _blank(frames, size, rng)
    for colour, begin, end in zip(colours, [0, *boundaries], [*boundaries, frames], strict=True):
        _paint(video, slice(begin, end), x, y, side, COLOURS[COLOUR_NAMES[colour]])
    return video, list(COUNT_OPTIONS), changes


_MAKERS: dict[str, Callable] = {"appearance": _appearance, "motion": _motion, "order": _order, "flash": _flash,
                                "counting": _counting}


def make_sample(seed: int, index: int, frames: int = 16, size: int = 32) -> tuple[np.ndarray, dict[str, Any]]:
    """Sample `index` of seed `seed`: uint8 frames `[frames, size, size, 3]` and its record (without `video`)."""
    check_generator_args(1, frames, size)
    kind = KINDS[index % len(KINDS)]
    rng = np.random.default_rng([seed, index])
    video, options, answer = _MAKERS[kind](frames, size, rng)
    record = {"id": f"s{seed}-{index}", "kind": kind, "question": QUESTIONS[kind], "options": options,
              "answer": string.ascii_uppercase[answer]}
    return np.clip(video, 0, 255).astype(np.uint8), record


def write_split(out: str | Path, seed: int, samples: int, frames: int = 16, size: int = 32,
                family: str | None = None) -> Path:
    """Write `samples` videos and `annotations.jsonl` (written last: its presence means the split is complete).

    Args:
        out: the split's folder.
        seed: the split's seed (use a different one per split).
        samples: questions, one video each; kinds cycle through `KINDS`.
        frames: frames per video (even; for Qwen families a multiple of their temporal patch).
        size: pixels per side.
        family: check `frames` and `size` against this family's tiny vision tower (None: the generic rules).

    Returns:
        The JSONL's path.
    """
    from lightning_prune.data.video_qa import write_video

    check_generator_args(samples, frames, size, family)
    out = Path(out)
    lines = []
    for index in range(samples):
        video, record = make_sample(seed, index, frames, size)
        name = f"video_{index}.mp4"
        write_video(out / name, video, lossless=True)  # colours exact: `counting` compares them
        lines.append({"video": name, **record})
    annotations = out / "annotations.jsonl"
    write_atomic(annotations, "".join(json.dumps(line) + "\n" for line in lines))
    return annotations


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a seeded synthetic temporal video-QA split (videos + JSONL).")
    parser.add_argument("--seed", type=int, required=True, help="the split's seed")
    parser.add_argument("--samples", type=int, required=True, help="questions (one video each)")
    parser.add_argument("--frames", type=int, default=16, help="frames per video (default 16)")
    parser.add_argument("--size", type=int, default=32, help="pixels per side (default 32)")
    parser.add_argument("--family", default=None, choices=list(FAMILY_GEOMETRY),
                        help="check frames and size against this family's tiny vision tower")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    try:
        check_generator_args(args.samples, args.frames, args.size, args.family)
    except ValueError as error:
        parser.error(str(error))
    written = write_split(args.out, args.seed, args.samples, args.frames, args.size, args.family)
    print(f"Wrote {written}")  # noqa: T201 (a CLI)


if __name__ == "__main__":
    main()
