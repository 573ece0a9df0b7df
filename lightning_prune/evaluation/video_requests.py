"""lmms-eval `generate_until` requests as video-QA samples: checked up front, decoded lazily, batched like our data.

A request's `args` are `(context, gen_kwargs, doc_to_visual, doc_id, task, split)`; its visual is a list holding one
video path (decoded with our PyAV reader) or a list of PIL frames (some MVBench subtasks). Both become uint8
`[num_frames, H, W, 3]` frames picked by the same sampler as `VideoQADataModule`. Samples have the DataModule's keys
(`videos`, `question`, `options`, `id`; batch them with its `collate_video_qa`), the context standing in as the
question, so `VideoLLM.predict_step` serves them unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_prune._checks import is_int
from lightning_prune.data.video_qa import check_video_readable, read_video_frames, uniform_frame_indices

_SAMPLING_KEYS = ("do_sample", "temperature", "num_beams", "top_p")


@dataclass
class VideoRequest:
    """One checked request: a video file (`video`) or PIL frames that `load_frames()` gives again when decoded.

    Frames are not kept between the check and the decoding, so a frame task is never held in memory whole.
    """

    index: int
    context: str
    video: str | None
    task: str
    doc_id: int
    until: list[str] = field(default_factory=list)
    max_new_tokens: int | None = None
    load_frames: Callable[[], list[Any]] | None = None

    @property
    def where(self) -> str:
        return f"task {self.task!r}, doc {self.doc_id}"


def parse_request(index: int, args: tuple, task_docs: dict[str, Any]) -> tuple[VideoRequest, list[str]]:
    """Check one request's visual and generation settings; returns it and the names of ignored sampling settings.

    Args:
        index: position of the request in lmms-eval's list.
        args: the request's `(context, gen_kwargs, doc_to_visual, doc_id, task, split)`.
        task_docs: lmms-eval's `lm.task_dict` (task name -> split -> documents).

    Raises:
        ValueError: not exactly one video, a video that cannot be decoded, or bad `until` / `max_new_tokens`,
            naming the task, the document id and (for a video) the path.
    """
    if len(args) != 6:
        raise ValueError(f"`lightning_prune` expects generate_until arguments (context, gen_kwargs, doc_to_visual, "
                         f"doc_id, task, split), got {len(args)} values.")
    context, gen_kwargs, doc_to_visual, doc_id, task, split = args
    request = VideoRequest(index, context, None, task, doc_id)
    doc = task_docs[task][split][doc_id]
    visual = doc_to_visual(doc) if doc_to_visual is not None else None
    if _one_video(visual, request.where) == "path":
        request.video = visual[0] if isinstance(visual, (list, tuple)) else visual
    else:
        request.load_frames = partial(doc_to_visual, doc)
    gen_kwargs = dict(gen_kwargs or {})
    until = gen_kwargs.pop("until", [])
    until = [until] if isinstance(until, str) else until
    if not (isinstance(until, list) and all(isinstance(stop, str) for stop in until)):
        raise ValueError(f"{request.where}: `until` must be a string or a list of strings, got {until!r}.")
    request.until = [stop for stop in until if stop]
    max_new_tokens = gen_kwargs.get("max_new_tokens")
    if max_new_tokens is not None and not is_int(max_new_tokens, 1):
        raise ValueError(f"{request.where}: `max_new_tokens` must be an integer >= 1, got {max_new_tokens!r}.")
    request.max_new_tokens = max_new_tokens
    ignored = [key for key in _SAMPLING_KEYS if _asks_sampling(key, gen_kwargs.get(key))]
    return request, ignored


def _asks_sampling(key: str, value: Any) -> bool:
    if value is None:
        return False
    return {"do_sample": bool(value), "temperature": value != 0, "num_beams": value != 1, "top_p": value != 1}[key]


def _one_video(visual: Any, where: str) -> str:
    """Check a request's visual: "path" for one readable video file, "frames" for PIL frames of one size."""
    items = list(visual) if isinstance(visual, (list, tuple)) else [visual]
    if len(items) == 1 and isinstance(items[0], str):
        try:
            check_video_readable(items[0])
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        return "path"
    if items and all(hasattr(item, "convert") and hasattr(item, "size") for item in items):  # PIL images
        sizes = {tuple(item.size) for item in items}
        if len(sizes) != 1:
            raise ValueError(f"{where}: the PIL frames of a video must share one size, got {sorted(sizes)}.")
        return "frames"
    kinds = [type(item).__name__ for item in items]
    raise ValueError(f"{where}: `lightning_prune` takes one video per request (a file path or a list of PIL frames), "
                     f"got {kinds}.")


class VideoRequestDataset(Dataset):
    """Decodes each request's frames on access (so DataLoader workers can decode while the model generates)."""

    def __init__(self, requests: list[VideoRequest], num_frames: int, sampling: str):
        self.requests, self.num_frames, self.sampling = requests, num_frames, sampling

    def __len__(self) -> int:
        return len(self.requests)

    def __getitem__(self, position: int) -> dict[str, Any]:
        request = self.requests[position]
        if request.load_frames is None:
            try:
                frames = read_video_frames(request.video, self.num_frames, self.sampling)
            except (ValueError, OSError) as error:
                raise ValueError(f"{request.where}: video {request.video} cannot be decoded: {error}") from None
        else:
            images = request.load_frames()
            picked = uniform_frame_indices(len(images), self.num_frames, self.sampling)
            frames = torch.from_numpy(np.stack([np.asarray(images[i].convert("RGB")) for i in picked]))
        return {"videos": frames, "question": request.context, "options": [], "id": request.index}


def truncate_at_stops(text: str, until: list[str]) -> str:
    """`text` up to the first occurrence of any stop string (lmms-eval's `until`)."""
    for stop in until:
        text = text.split(stop)[0]
    return text
