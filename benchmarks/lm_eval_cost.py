"""What measuring and recovering a pruned LLM costs here: lm-eval in process vs its CLI, LoRA vs full retraining.

On the random Llama of `benchmarks/llm_pruning.py` (hidden 512, 8 layers, 8 query heads in 2 KV groups, MLP 1408,
vocabulary 32,000), pruned physically by L1 at 50% of every MLP and 50% of the query heads:

1. Time per sample of the shipped tiny lm-eval task (40 four-way questions = 160 log-likelihood requests), in
   process (`evaluate_lm`, the network object handed to lm-eval's HFLM; first call and a repeat) and through
   `lm_eval --model hf` on a `save_pretrained` folder (a fresh process: imports, loading, task indexing included).
2. Training steps per second (forward + backward + AdamW step on `--train-batch` x `--train-length` tokens) with
   LoRA (LLM-Pruner's defaults: r 8, alpha 16, q/k/v/o/gate/down/up) vs full retraining, and the trainable
   parameter counts.
3. With `--recipe`: the tiny offline recipe (`configs/pruning/tiny_llama_llmpruner.yaml`), its tiny-task accuracy
   and perplexity before pruning, right after, and after LoRA recovery (run from the repository root).

Usage: `python benchmarks/lm_eval_cost.py --json benchmarks/results/lm_eval_cost_cpu.json [--recipe]`
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from lightning_prune.callbacks._lora import LoraAdapters, lora_settings
from lightning_prune.evaluation.lm_harness import LM_TASKS_DIR, TINY_LM_TASK, evaluate_lm
from lightning_prune.pruning.build import build_structure
from lightning_prune.pruning.criteria import build_criterion
from lightning_prune.pruning.hf_export import save_pruned_pretrained
from lightning_prune.pruning.lm_loss import causal_lm_loss

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "lightning_prune" / "data" / "assets" / "tiny_text"
# Half the query heads (8 -> 4), not the quarter of llm_pruning.py: transformers 5.25 refuses a Llama config whose
# hidden size (512) is not a multiple of the head count (6), so 6 heads could not be written to a folder.
PATTERNS = {"model.layers.*.mlp": 0.5, "model.layers.*.self_attn": 0.5}
SAMPLES = 40


def pruned_model(device: torch.device) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=2, head_dim=64, max_position_embeddings=2048, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(device).eval()
    structure = build_structure(model, torch.zeros(1, 16, dtype=torch.long, device=device))
    counts = structure.pruned_counts(structure.select(PATTERNS))
    scores = build_criterion("l1").scores(structure, list(counts))
    structure.prune(structure.choose_units(scores, counts))
    return model


def lm_eval_times(model: LlamaForCausalLM, device: torch.device, batch_size: int) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    times = []
    for _ in range(2):  # the first call also indexes lm-eval's tasks
        start = time.perf_counter()
        evaluate_lm(model, tokenizer, [TINY_LM_TASK], batch_size=batch_size)
        times.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as folder:
        assert save_pruned_pretrained(model, folder) is None  # a config with the pruned sizes
        tokenizer.save_pretrained(folder)
        env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        command = [str(Path(sys.executable).with_name("lm_eval")), "--model", "hf", "--model_args",
                   f"pretrained={folder}", "--include_path", str(LM_TASKS_DIR), "--tasks", TINY_LM_TASK,
                   "--device", str(device), "--batch_size", str(batch_size)]
        start = time.perf_counter()
        subprocess.run(command, check=True, env=env, cwd=folder, capture_output=True)
        cli = time.perf_counter() - start
    return {"in_process_first_s_per_sample": times[0] / SAMPLES, "in_process_repeat_s_per_sample": times[1] / SAMPLES,
            "cli_s_per_sample": cli / SAMPLES, "cli_total_s": cli, "in_process_repeat_total_s": times[1]}


def steps_per_second(model: LlamaForCausalLM, device: torch.device, args: argparse.Namespace) -> float:
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, 32000, (args.train_batch, args.train_length), device=device,
                        generator=torch.Generator(device=device).manual_seed(0))
    times = []
    for _ in range(args.repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        causal_lm_loss(model(ids, use_cache=False), ids).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1.0 / statistics.median(times[1:])


def retraining(device: torch.device, args: argparse.Namespace) -> dict:
    full = pruned_model(device)
    full_params = sum(p.numel() for p in full.parameters() if p.requires_grad)
    full_speed = steps_per_second(full, device, args)
    lora = pruned_model(device)
    adapters = LoraAdapters(lora, lora_settings({"method": "lora"}))
    lora_speed = steps_per_second(lora, device, args)
    return {"full_trainable_params": full_params, "lora_trainable_params": adapters.trainable_parameters(),
            "full_steps_per_s": full_speed, "lora_steps_per_s": lora_speed, "lora_speedup": lora_speed / full_speed}


def recipe(root: Path) -> dict:
    from lightning_prune.cli import main

    main(["fit", "--config", str(ROOT / "configs/pruning/tiny_llama_llmpruner.yaml"),
          f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false"])
    (metrics,) = root.rglob("metrics.csv")
    logged = {key: float(value) for row in csv.DictReader(metrics.open()) for key, value in row.items() if value}
    stages = {"before": "unpruned/", "pruned": "pruned/", "after_lora": ""}
    names = {"acc": f"lm_eval/{TINY_LM_TASK}/acc", "acc_norm": f"lm_eval/{TINY_LM_TASK}/acc_norm",
             "ppl": "ppl/tiny_val"}
    return {stage: {key: logged.get(prefix + name) for key, name in names.items()} for stage, prefix in
            stages.items()} | {"params": {k: logged.get(f"prune/params_{k}") for k in ("before", "after")}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16, help="lm-eval requests per forward pass")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--train-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--recipe", action="store_true", help="also run the tiny recipe (minutes on a CPU)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    device = torch.device(args.device)
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                          "threads": torch.get_num_threads()},
              "lm_eval": lm_eval_times(pruned_model(device), device, args.batch_size),
              "retraining": retraining(device, args)}
    if args.recipe:
        with tempfile.TemporaryDirectory() as folder:
            result["tiny_recipe"] = recipe(Path(folder))
    text = json.dumps(result, indent=2)
    print(text)  # noqa: T201 (a script)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
