"""Write the data of the `lightning_prune_tiny` lmms-eval task: synthetic temporal video QA and its JSONL.

    python -m lightning_prune.evaluation.tiny_task [--root data] [--samples 4]

The task's YAML (shipped in `lightning_prune/evaluation/tasks/`) reads `data/lightning_prune_tiny/...` relative to
the folder lmms-eval runs in; the JSONL's video paths are relative to that same folder. The questions are the test
split of `lightning_prune.data.synthetic_video` (seed 3, never used in training: appearance, motion, order, flash,
counting in turn), so the tiny models trained here (`configs/dycoke/trained_*.yaml`) answer them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lightning_prune.data.synthetic_video import write_split
from lightning_prune.data.video_qa import read_annotations

TASK_NAME = "lightning_prune_tiny"
TASKS_DIR = Path(__file__).resolve().parent / "tasks"  # the folder to pass as lmms-eval's --include_path
TEST_SEED = 3  # the synthetic test split's seed (SyntheticVideoQADataModule's default test_seed)


def write_tiny_task_data(root: str | Path = "data", samples: int = 4, frames: int = 16, size: int = 32,
                         kinds: list[str] | None = None) -> Path:
    """Create `<root>/lightning_prune_tiny/` with `samples` videos and `lightning_prune_tiny.jsonl`; returns the JSONL.

    Args:
        root: the data folder (relative paths stay relative, so the JSONL's video paths match the task's data file).
        samples: questions (one video each; the kinds cycle through appearance, motion, order, flash, counting).
        frames: frames per video.
        size: pixels per side.
        kinds: keep only the questions of these kinds (None: all; the videos of the others are written too).
    """
    folder = Path(root) / TASK_NAME
    records = read_annotations(write_split(folder, TEST_SEED, samples, frames, size))
    lines = [{"id": r["id"], "video": str(folder / r["video"]), "question": r["question"], "options": r["options"],
              "answer": r["answer"], "kind": r["kind"]} for r in records if kinds is None or r["kind"] in kinds]
    target = folder / f"{TASK_NAME}.jsonl"
    target.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data", help="data folder, relative to where lmms-eval runs (default: data)")
    parser.add_argument("--samples", type=int, default=4, help="questions, one video each (default: 4)")
    args = parser.parse_args(argv)
    written = write_tiny_task_data(args.root, args.samples)
    print(f"Wrote {written}. Task folder for lmms-eval's --include_path: {TASKS_DIR}")  # noqa: T201 (a CLI)


if __name__ == "__main__":
    main()
