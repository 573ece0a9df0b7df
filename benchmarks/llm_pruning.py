"""What structured pruning buys on a decoder LM, and what the oracle costs to score its units.

A random Llama (hidden 512, 8 layers, 8 query heads in 2 KV groups of head_dim 64, MLP 1408, vocabulary 32,000)
is pruned physically at 50% of every layer's MLP channels and 25% of its query heads (one per KV group), by L1.

1. Parameters before and after.
2. Prefill time (one forward pass of `--prefill-batch` x `--prefill-length` tokens, no grad) and
   forward+backward time (`--train-batch` x `--train-length` tokens, next-token loss), median of `--repeats`,
   before and after; speed-up = before / after.
3. Oracle scoring cost: wall time to score all query heads of all layers (and with `--oracle-mlp` the 1,408 MLP
   channels of one layer) on one calibration batch (`--calib-batch` x `--calib-length`), in calibration passes
   per unit (time / units / time of one plain forward pass over the same batch).

Usage: `python benchmarks/llm_pruning.py --json benchmarks/results/llm_pruning_cpu.json [--threads 1]`
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
from transformers import LlamaConfig, LlamaForCausalLM

from lightning_prune.pruning.build import build_structure
from lightning_prune.pruning.criteria import build_criterion
from lightning_prune.pruning.lm_loss import causal_lm_loss

PATTERNS = {"model.layers.*.mlp": 0.5, "model.layers.*.self_attn": 0.25}


def _model(device: torch.device) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=2, head_dim=64, max_position_embeddings=2048, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).to(device).eval()


def _median_time(run: Callable[[], object], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats + 1):  # the first run warms up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def _speeds(models: dict[str, LlamaForCausalLM], args: argparse.Namespace, device: torch.device) -> dict:
    """Prefill and forward+backward times of each model, measured in alternation (round-robin over the models,
    `--repeats` rounds after a warm-up) so that load from other processes on a shared machine hits them alike."""
    generator = torch.Generator().manual_seed(0)
    prefill = torch.randint(0, 32000, (args.prefill_batch, args.prefill_length), generator=generator).to(device)
    train = torch.randint(0, 32000, (args.train_batch, args.train_length), generator=generator).to(device)

    def forward(model):
        with torch.no_grad():
            model(prefill, use_cache=False)

    def forward_backward(model):
        model.zero_grad(set_to_none=True)
        causal_lm_loss(model(train, use_cache=False), train).backward()

    times: dict[str, dict[str, list[float]]] = {name: {"prefill_s": [], "forward_backward_s": []} for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            times[name]["prefill_s"].append(_median_time(lambda m=model: forward(m), 1, device))
            times[name]["forward_backward_s"].append(_median_time(lambda m=model: forward_backward(m), 1, device))
    return {
        name: {"params": sum(p.numel() for p in model.parameters()),
               **{key: statistics.median(values) for key, values in times[name].items()}}
        for name, model in models.items()
    }


def _oracle_cost(model: LlamaForCausalLM, args: argparse.Namespace, device: torch.device) -> dict:
    ids = torch.randint(0, 32000, (args.calib_batch, args.calib_length),
                        generator=torch.Generator().manual_seed(1)).to(device)
    batches = [(ids, ids)]
    structure = build_structure(model, ids[:1, :8])
    pass_s = _median_time(lambda: causal_lm_loss(model(ids, use_cache=False), ids), args.repeats, device)
    oracle = build_criterion("oracle", chunk_size=args.chunk_size)
    cost = {"calibration_pass_s": pass_s}
    sets = [("heads_all_layers", [f"model.layers.{i}.self_attn" for i in range(8)])]
    if args.oracle_mlp:
        sets.append(("mlp_one_layer", ["model.layers.0.mlp"]))
    for label, layers in sets:
        units = sum(structure.layers[name].units for name in layers)
        start = time.perf_counter()
        with torch.no_grad():
            oracle.scores(structure, layers, batches, causal_lm_loss)
        seconds = time.perf_counter() - start
        cost[label] = {"units": units, "seconds": seconds, "passes_per_unit": seconds / units / pass_s}
        print(label, cost[label], flush=True)
    return cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prefill-batch", type=int, default=1)
    parser.add_argument("--prefill-length", type=int, default=512)
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--train-length", type=int, default=256)
    parser.add_argument("--calib-batch", type=int, default=1)
    parser.add_argument("--calib-length", type=int, default=128)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--oracle-mlp", action="store_true", help="also score one layer's 1,408 MLP channels")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    model = _model(device)
    result: dict = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                    "torch_threads": args.threads, "device": str(device), "args": vars(args) | {"json": str(args.json)}}
    result["oracle"] = _oracle_cost(model, args, device)
    pruned = copy.deepcopy(model)
    structure = build_structure(pruned, torch.zeros(1, 8, dtype=torch.long, device=device))
    counts = structure.pruned_counts(structure.select(PATTERNS))
    scores = build_criterion("l1").scores(structure, list(counts))
    structure.prune(structure.choose_units(scores, counts))
    result.update(_speeds({"before": model, "after": pruned}, args, device))
    result["speedup"] = {key: result["before"][key] / result["after"][key]
                         for key in ("prefill_s", "forward_backward_s")}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
