"""What it costs to build the pruning structure of torchvision classifiers, and what 25% pruning buys.

Per model (random weights, 1,000 classes, 224x224 input; ViT-B/16 and Swin-T at their native 224), each in a fresh
process so that peak memory is its own:

1. Build: wall time and peak resident memory added (`ru_maxrss` after - before) to build `PruningStructure` on a
   `[1, 3, 224, 224]` example and `select` 25% of every prunable layer (which builds their Torch-Pruning groups).
2. Prune: wall time to score them by L1 and remove them physically.
3. Forward+backward time of a `--batch` x 3 x 224 x 224 batch (cross-entropy, median of `--repeats`), of the
   unpruned copy and the pruned network in turn (so that load on a shared CPU hits both alike); speed-up =
   before / after. Parameters before and after.

Usage: `python benchmarks/structure_build.py --json benchmarks/results/structure_build_cpu.json [--threads 1]`
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

MODELS = [
    "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2", "mobilenet_v3_small",
    "efficientnet_b0", "efficientnet_v2_s", "densenet121", "regnet_y_400mf", "shufflenet_v2_x0_5", "squeezenet1_0",
    "googlenet", "mnasnet0_5", "vgg11_bn", "alexnet", "convnext_tiny", "vit_b_16", "swin_t",
]
# ViT: heads and MLP channels (its embedding dimension would exclude the heads of the same attention).
PATTERNS = {"vit_b_16": {"*self_attention": 0.25, "*mlp.0": 0.25}}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _train_steps_ms(networks: list[torch.nn.Module], images: torch.Tensor, repeats: int) -> list[float]:
    """Median forward+backward time of each network, the networks interleaved (a shared CPU slows both alike)."""
    targets = torch.zeros(len(images), dtype=torch.long)
    times: list[list[float]] = [[] for _ in networks]
    for _ in range(repeats + 1):  # the first round warms up
        for network, spent in zip(networks, times, strict=True):
            network.train()
            start = time.perf_counter()
            F.cross_entropy(network(images), targets).backward()
            spent.append(time.perf_counter() - start)
            network.zero_grad(set_to_none=True)
    return [1000 * statistics.median(spent[1:]) for spent in times]


def measure(name: str, batch: int, repeats: int) -> dict:
    """Build, prune and time one model (call in a fresh process for its own peak memory)."""
    from lightning_prune.pruning import PruningStructure, l1_scores, lowest_units

    kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    torch.manual_seed(0)
    network = torchvision.models.get_model(name, **kwargs).eval()
    images = torch.randn(batch, 3, 224, 224)
    params_before = sum(p.numel() for p in network.parameters())
    rss_before = _rss_mb()
    start = time.perf_counter()
    structure = PruningStructure(network, images[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ratios = structure.select(PATTERNS.get(name, {"*": 0.25}))
    build_s = time.perf_counter() - start
    build_mb = _rss_mb() - rss_before
    original = copy.deepcopy(network)
    start = time.perf_counter()
    counts = structure.pruned_counts(ratios)
    structure.prune(lowest_units(l1_scores(structure, list(counts)), counts))
    prune_s = time.perf_counter() - start
    before_ms, after_ms = _train_steps_ms([original, network], images, repeats)
    return {
        "model": name, "layers": len(ratios), "refused": len(structure.refused), "build_s": round(build_s, 2),
        "build_peak_mb": round(build_mb), "prune_s": round(prune_s, 2), "params_before": params_before,
        "params_after": sum(p.numel() for p in network.parameters()), "train_step_ms_before": round(before_ms, 1),
        "train_step_ms_after": round(after_ms, 1), "speedup": round(before_ms / after_ms, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model in this process
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.one, args.batch, args.repeats)))
        return
    rows = []
    for name in args.models:
        command = [sys.executable, __file__, "--one", name, "--batch", str(args.batch), "--repeats",
                   str(args.repeats), "--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            rows.append({"model": name, "error": done.stderr.strip().splitlines()[-1]})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    result = {"machine": f"{platform.machine()} {platform.processor()}, {torch.get_num_threads()} thread(s)",
              "torch": torch.__version__, "torchvision": torchvision.__version__, "batch": args.batch, "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
