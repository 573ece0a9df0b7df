"""Batches of the synthetic temporal video QA, as `VideoQADataModule` yields them, built from the generator directly."""

from __future__ import annotations

import torch

from lightning_prune.data.synthetic_video import make_sample


def synthetic_batch(seed: int, indices, frames: int = 8, size: int = 32) -> dict:
    """Samples `indices` of generator seed `seed`: `videos`, `question`, `options`, `answer_index`, `id`, `kind`."""
    samples = [make_sample(seed, index, frames=frames, size=size) for index in indices]
    return {"videos": [torch.from_numpy(video) for video, _ in samples],
            "question": [r["question"] for _, r in samples], "options": [r["options"] for _, r in samples],
            "answer_index": ["ABCD".index(r["answer"]) for _, r in samples], "id": [r["id"] for _, r in samples],
            "kind": [r["kind"] for _, r in samples]}
