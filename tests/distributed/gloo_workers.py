"""Code run inside spawned gloo processes by the distributed tests (importable by name in the children)."""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from _support.toys import SmallCNN


def small_cnn() -> SmallCNN:
    torch.manual_seed(0)
    network = SmallCNN()
    with torch.no_grad():
        network.bn1.running_mean.uniform_(-0.5, 0.5)
        network.bn1.running_var.uniform_(0.5, 1.5)
    return network


def rank_data(rank: int, batches: int = 2, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Different calibration batches on every rank."""
    generator = torch.Generator().manual_seed(100 + rank)
    return [(torch.randn(size, 1, 8, 8, generator=generator), torch.randint(0, 3, (size,), generator=generator))
            for _ in range(batches)]


def run_gloo(rank: int, world_size: int, init_file: str, out: str, job) -> None:
    """Join a gloo group, run `job(rank)`, save its result (or the error text) to `out/rank{rank}.pt`."""
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        result = {"value": job(rank)}
    except Exception as error:  # reported to the test, which asserts on it
        result = {"error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()}
    finally:
        dist.destroy_process_group()
    torch.save(result, Path(out) / f"rank{rank}.pt")


def scores_job(rank: int) -> dict:
    """Local (this rank's data only) and reduced Taylor and oracle scores, the reduced choice and the helpers."""
    from lightning_prune.pruning import PruningStructure, lowest_units, oracle_scores, taylor_scores
    from lightning_prune.pruning.distributed import agreed, rank_batches, ranks_without

    network = small_cnn()
    structure = PruningStructure(network, torch.zeros(1, 1, 8, 8))
    layers = ["conv1", "conv2"]
    batches = rank_data(rank)
    taylor = taylor_scores(structure, layers, batches)
    oracle = oracle_scores(structure, layers, batches)
    chosen = agreed(lowest_units(taylor, {"conv1": 3, "conv2": 2}), "pruned indices")
    try:
        agreed({"conv1": [rank]}, "pruned indices")
        disagreement = None
    except RuntimeError as error:
        disagreement = str(error)
    return {"taylor": taylor, "oracle": oracle, "chosen": chosen, "disagreement": disagreement,
            "shard": rank_batches(iter(range(10)), 3), "without": ranks_without(rank != 1)}

