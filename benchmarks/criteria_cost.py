"""What pruning criteria cost, and what physical pruning buys.

1. Wall time to score every filter of ResNet-56's `*layer*.conv1` layers (27 layers, 1,008 filters) by each
   criterion on `--batches` calibration batches of `--batch-size` random CIFAR-shaped tensors, and the cost of each
   relative to one evaluation pass over those batches. The oracle is run on `--oracle-layers` (default: the middle
   block of each stage, which holds the stages' filters in proportion) on `--oracle-batches` batches; its cost grows
   linearly in both, so the time for all layers on all batches is extrapolated from that and reported as such.
   `--oracle-layers all --oracle-batches 10` measures the full thing (use a GPU).
2. Forward+backward time of physically pruned LeNet5-Mini and ResNet-56 at 0.5 against the unpruned networks.

Usage: `python benchmarks/criteria_cost.py --json results/criteria_cost.json [--threads 1] [--device cpu]`
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from lightning_prune.models import build_model
from lightning_prune.pruning import PruningStructure, build_criterion, evaluate_classifier

STUDY_PATTERN = {"*layer*.conv1": 0.5}
MIDDLE_BLOCKS = ["layer1.4.conv1", "layer2.4.conv1", "layer3.4.conv1"]


def _timed(run: Callable[[], object], device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def _batches(count: int, size: int, shape: tuple[int, ...], device: torch.device) -> list:
    generator = torch.Generator().manual_seed(0)
    return [
        (torch.randn(size, *shape, generator=generator).to(device),
         torch.randint(0, 10, (size,), generator=generator).to(device))
        for _ in range(count)
    ]


def criteria_cost(args: argparse.Namespace, device: torch.device) -> dict:
    """Scoring time of every criterion on ResNet-56's study layers, relative to one evaluation pass."""
    network = build_model("cifar_resnet56").to(device)
    structure = PruningStructure(network, torch.zeros(1, 3, 32, 32, device=device))
    layers = list(structure.select(STUDY_PATTERN))
    filters = sum(structure.layers[name].units for name in layers)
    batches = _batches(args.batches, args.batch_size, (3, 32, 32), device)
    evaluate_classifier(network, batches[:1])  # warm-up
    eval_s, _ = _timed(lambda: evaluate_classifier(network, batches), device)
    result = {"layers": len(layers), "filters": filters, "batches": args.batches, "batch_size": args.batch_size,
              "eval_pass_s": eval_s, "criteria": {}}
    for name in ("l1", "random", "taylor"):
        seconds, _ = _timed(lambda n=name: build_criterion(n).scores(structure, layers, batches, F.cross_entropy),
                            device)
        result["criteria"][name] = {"seconds": seconds, "relative_to_eval_pass": seconds / eval_s}

    oracle_layers = layers if args.oracle_layers == "all" else args.oracle_layers.split(",")
    oracle_batches = batches[: args.oracle_batches]
    oracle_filters = sum(structure.layers[name].units for name in oracle_layers)
    subset_eval_s, _ = _timed(lambda: evaluate_classifier(network, oracle_batches), device)
    criterion = build_criterion("oracle", chunk_size=args.chunk_size)
    seconds, _ = _timed(lambda: criterion.scores(structure, oracle_layers, oracle_batches, F.cross_entropy), device)
    evaluations = seconds / subset_eval_s
    scale = (filters / oracle_filters) * (args.batches / len(oracle_batches))
    result["criteria"]["oracle"] = {
        "measured_layers": oracle_layers, "measured_filters": oracle_filters, "measured_batches": len(oracle_batches),
        "measured_seconds": seconds, "evaluation_passes": evaluations,
        "evaluation_passes_per_filter": evaluations / oracle_filters,
        "seconds": seconds * scale, "seconds_is_extrapolated": scale != 1.0,
        "relative_to_eval_pass": evaluations * filters / oracle_filters,
    }
    return result


def _train_step(network: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    network.zero_grad(set_to_none=True)
    F.cross_entropy(network(inputs), targets).backward()


def pruning_speedup(args: argparse.Namespace, device: torch.device) -> dict:
    """Forward+backward time per batch, unpruned vs physically pruned at 0.5 (steps alternate, medians compared)."""
    cases = {
        "lenet5_mini conv1@0.5": ("lenet5_mini", {"conv1": 0.5}, (1, 32, 32), 256),
        "lenet5_mini conv*@0.5": ("lenet5_mini", {"conv*": 0.5}, (1, 32, 32), 256),
        "cifar_resnet56 *layer*.conv1@0.5": ("cifar_resnet56", STUDY_PATTERN, (3, 32, 32), 128),
    }
    results = {}
    for label, (model, pattern, shape, batch) in cases.items():
        unpruned = build_model(model).to(device).train()
        pruned = copy.deepcopy(unpruned)
        (inputs, targets), = _batches(1, batch, shape, device)
        structure = PruningStructure(pruned, inputs[:1])
        counts = structure.pruned_counts(structure.select(pattern))
        structure.prune({name: list(range(count)) for name, count in counts.items()})
        times: dict[str, list[float]] = {"unpruned": [], "pruned": []}
        for network in (unpruned, pruned):
            _train_step(network, inputs, targets)  # warm-up
        for _ in range(args.repeats):  # alternating cancels drifts of a shared machine's load
            for key, network in (("unpruned", unpruned), ("pruned", pruned)):
                times[key].append(_timed(lambda n=network, x=inputs, y=targets: _train_step(n, x, y), device)[0])
        before, after = statistics.median(times["unpruned"]), statistics.median(times["pruned"])
        results[label] = {
            "batch_size": batch, "unpruned_ms": 1e3 * before, "pruned_ms": 1e3 * after, "speedup": before / after,
            "params_before": sum(p.numel() for p in unpruned.parameters()),
            "params_after": sum(p.numel() for p in pruned.parameters()),
        }
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, required=True, help="where to write the results")
    parser.add_argument("--batches", type=int, default=10, help="calibration batches")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--oracle-layers", default=",".join(MIDDLE_BLOCKS), help="comma-separated, or 'all'")
    parser.add_argument("--oracle-batches", type=int, default=1, help="batches the oracle is measured on")
    parser.add_argument("--chunk-size", type=int, default=16, help="oracle ablations per batched pass")
    parser.add_argument("--repeats", type=int, default=9, help="timed forward+backward steps (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    started = time.perf_counter()
    results = {
        "machine": {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "cpu": platform.processor() or platform.machine()},
        "criteria_cost_resnet56": criteria_cost(args, device),
        "train_step_speedup": pruning_speedup(args, device),
    }
    results["wall_s"] = time.perf_counter() - started
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
