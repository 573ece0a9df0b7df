"""Measure a generation: prefill latency, per-token decode latency, peak memory. Used with and without DyCoke.

`GenerationTimer` hooks a model's forward: the prefill ends when the first forward of a fresh cache returns (so it
includes the vision encoder and everything `generate` does before it), each later forward is a decode step.
Memory: on CUDA the allocator's peak; on a CPU the process's peak resident set (Linux `VmHWM`, reset through
`/proc/self/clear_refs`; elsewhere the lifetime peak).
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class GenerationTiming:
    """Seconds for one measured span (usually one batch)."""

    prefill_s: float
    decode_s_per_token: float
    total_s: float
    decode_steps: int


class GenerationTimer:
    """Times the forward calls of `module` between `start()` and `stop()`.

    Args:
        module: the model `generate` calls forward on (or any submodule every step runs through).
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self._handles: list = []
        self._began = 0.0
        self._ends: list[float] = []

    def attach(self) -> GenerationTimer:
        if not self._handles:
            self._handles = [self.module.register_forward_hook(self._after_forward)]
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def start(self) -> None:
        self._ends = []
        self._began = _now()

    def stop(self) -> GenerationTiming:
        """Timing since `start()`; decode steps are every forward after the first."""
        ended = _now()
        if not self._ends:
            return GenerationTiming(prefill_s=ended - self._began, decode_s_per_token=0.0, total_s=ended - self._began,
                                    decode_steps=0)
        steps = len(self._ends) - 1
        decode = (self._ends[-1] - self._ends[0]) / steps if steps else 0.0
        return GenerationTiming(self._ends[0] - self._began, decode, ended - self._began, steps)

    def _after_forward(self, module: nn.Module, args: tuple, output: object) -> None:
        self._ends.append(_now())


def _now() -> float:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def resident_memory_bytes() -> int:
    """Current resident set size of this process (0 where /proc is missing)."""
    return _status_field("VmRSS")


def reset_peak_memory(device: torch.device | str = "cpu") -> None:
    """Start a new peak: CUDA's allocator statistics, or the process's peak RSS on Linux."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        pass  # not Linux, or not allowed: the peak stays the lifetime peak


def peak_memory_bytes(device: torch.device | str = "cpu") -> int:
    """Peak since `reset_peak_memory`: CUDA allocated bytes, or the process's peak RSS."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = _status_field("VmHWM")
    if peak:
        return peak
    # ru_maxrss is in bytes on macOS, kilobytes elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _status_field(name: str) -> int:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
