"""What lmms-eval and our bridge add around generation, and the efficiency report's figures with DyCoke on and off.

    python benchmarks/lmms_overhead.py --json runs/bench/lmms_overhead.json      # CPU, random small LLaVA-OneVision

Runs the shipped `lightning_prune_tiny` task (synthetic videos written to a temp folder) through `simple_evaluate`
with a `LightningPruneVideoLLM` built on a random LLaVA-OneVision of the size below, once with DyCoke off and once on
(the callback's defaults), after one untimed warm-up run. Per sample it reports:

- `harness_s`: time inside `simple_evaluate` but outside our `generate_until` (task loading, request building,
  scoring: lmms-eval's own cost);
- `bridge_s`: time inside `generate_until` but outside the model's generation (request checks, video decoding,
  the Lightning Trainer around predict, answer cutting);
- `generate_s`: the model's generation itself (the efficiency report's `generate_s` per sample);

and the efficiency report's summary (visual tokens before/after merging, prefill, decode per token, peak memory).
Imports (about 20 s for lmms-eval) and model building are excluded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import yaml

# LLM of width 256 x 4 layers (grouped KV heads); a one-layer vision tower whose 56 x 56 frames (14 x 14 patches of 4)
# pool to 7 x 7 = 49 tokens a frame: 16 frames give 785 visual tokens.
SMALL = {
    "text_config": {"hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4, "num_attention_heads": 4,
                    "num_key_value_heads": 2},
    "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                      "image_size": 56, "patch_size": 4},
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the results")
    parser.add_argument("--samples", type=int, default=8, help="questions of the tiny task (one video each)")
    parser.add_argument("--frames", type=int, default=16, help="frames per video given to the model")
    parser.add_argument("--new-tokens", type=int, default=16, help="greedy tokens per answer")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    args.json = args.json.resolve()  # before moving to the work folder
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from lightning_prune.evaluation.efficiency import summarize
    from lightning_prune.evaluation.lmms_model import LightningPruneVideoLLM
    from lightning_prune.evaluation.tiny_task import TASK_NAME, TASKS_DIR, write_tiny_task_data

    work = Path(tempfile.mkdtemp(prefix="lmms_overhead_"))
    os.chdir(work)  # the task reads data/lightning_prune_tiny/ relative to the working folder
    os.environ["LMMS_EVAL_DATASETS_CACHE"] = str(work / "datasets_cache")
    write_tiny_task_data("data", samples=args.samples, frames=32, size=64)
    config = work / "small.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"class_path": "lightning_prune.modules.VideoLLM",
                  "init_args": {"tiny_config": SMALL, "max_new_tokens": args.new_tokens}},
        "data": {"init_args": {"num_frames": args.frames}},
    }))
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)

    def run(dycoke: bool) -> dict:
        lm = LightningPruneVideoLLM(config=str(config), dycoke=dycoke, device="cpu", batch_size=args.batch_size)
        inside = []
        generate_until = lm.generate_until

        def timed(requests):
            began = time.perf_counter()
            try:
                return generate_until(requests)
            finally:
                inside.append(time.perf_counter() - began)

        lm.generate_until = timed
        began = time.perf_counter()
        simple_evaluate(model=lm, tasks=[TASK_NAME], task_manager=manager, log_samples=True,
                        gen_kwargs=f"max_new_tokens={args.new_tokens}", bootstrap_iters=0)
        total = time.perf_counter() - began
        rows = lm.efficiency_rows
        generation = sum(row["generate_s"] / row["batch_size"] for row in rows)
        return {
            "samples": len(rows),
            "total_s": total,
            "per_sample": {"harness_s": (total - sum(inside)) / len(rows),
                           "bridge_s": (sum(inside) - generation) / len(rows),
                           "generate_s": generation / len(rows)},
            "efficiency": summarize(rows),
        }

    run(False)  # warm-up: first-call costs (dataset cache, kernels) stay out of the figures
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch threads {args.threads}",
        "model": "random LLaVA-OneVision: LLM 256 x 4 layers, vision 1 layer, 56 px frames, 49 tokens/frame",
        "settings": vars(args) | {"json": str(args.json)},
        "dycoke_off": run(False),
        "dycoke_on": run(True),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))  # noqa: T201 (a script)
    return result


if __name__ == "__main__":
    main()
