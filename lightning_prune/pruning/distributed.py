"""Pruning in several processes (torch.distributed, no Lightning): the same units are chosen on every rank.

Every function here is a no-op in a single process and a collective when a process group with more than one rank
is initialised, so *every rank must call it, in the same order*:

- `sum_across_ranks`: the data-driven criteria sum their statistics over all ranks, so Taylor terms and oracle
  loss deltas cover the union of the ranks' calibration batches and the scores are the same on every rank.
- `rank_batches`: each rank reads its own share of the calibration batches (batch `rank`, `rank + world`, ...).
- `agreed`: rank 0's choice of units is the one used; every rank checks that its own choice equals it.
- `ranks_without`: which ranks lack something (a train loader), so that all ranks raise the same error together
  instead of one rank raising while the others wait in a collective.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def world() -> tuple[int, int]:
    """`(rank, world size)` of the default process group, `(0, 1)` when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sum_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `tensor` over all ranks (the tensor itself in a single process).

    The sum is computed on the device the backend needs (CUDA for NCCL) and returned on `tensor`'s device; the
    input is left unchanged. Every rank receives the same bytes, so choices made from the result agree.

    Args:
        tensor: Any shape, the same shape and dtype on every rank.

    Returns:
        A new tensor of the same shape, dtype and device.
    """
    if world()[1] == 1:
        return tensor.clone()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else tensor.device
    total = tensor.detach().to(device, copy=True)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(tensor.device)


def rank_batches(batches: Iterable[T], count: int) -> list[T]:
    """This rank's `count` batches of `batches`: those at positions `rank, rank + world, ...`.

    The ranks thus read disjoint batches whose union is the first `world * count` batches of an (unsharded,
    identically ordered) loader, the batches one process would read with `world * count` calibration batches.
    """
    rank, size = world()
    return list(islice(batches, rank, rank + size * count, size))


def _gathered(value: T) -> list[T]:
    rank, size = world()
    if size == 1:
        return [value]
    values: list = [None] * size
    dist.all_gather_object(values, value)
    return values


def agreed(choice: T, what: str) -> T:
    """Rank 0's `choice`, after every rank has checked that its own `choice` equals it.

    Args:
        choice: A picklable value computed on every rank (e.g. `{layer: pruned indices}`).
        what: What the value is, for the error message.

    Raises:
        RuntimeError: On every rank, if some rank's choice differs from rank 0's (naming those ranks).
    """
    choices = _gathered(choice)
    differing = [rank for rank, other in enumerate(choices) if other != choices[0]]
    if differing:
        raise RuntimeError(
            f"{what} must be the same on every rank, got a different choice on rank(s) {differing} than on rank 0 "
            f"({choices[differing[0]]!r} vs {choices[0]!r}); scores that depend on a rank's own data or seed "
            "must be reduced across ranks first."
        )
    return choices[0]


def ranks_without(present: bool) -> list[int]:
    """The ranks on which `present` is False (every rank gets the same list)."""
    return [rank for rank, flag in enumerate(_gathered(bool(present))) if not flag]
