"""What DyCoke's settings cost in answers: the tiny trained video LLMs over a K x P grid, both variants.

    python benchmarks/compression_tradeoff.py --json benchmarks/results/compression_tradeoff_cpu.json \
        --plot docs/compression_tradeoff.png [--samples 250] [--families llava_onevision qwen2_5_vl]

For each shipped trained family (`VideoLLM(checkpoint=<family>)`) and the synthetic test split (seed 3, never used in
training; the first `--samples` questions, kinds in turn): the uncompressed model, then DyCoke with L = 3 and every
K in {0, 0.3, 0.5, 0.7, 0.9} x P in {0, 0.5, 0.7, 0.8, 0.9}, variants `official` and `refined` (both with the
published position rule), and `official` with `positions: original` (kept tokens keep their whole-prompt positions).
The answer is the option letter after the greedy "Answer:" prefix, so the letter is decoded with the pruned cache (P
acts on it).
Reported per setting: accuracy overall and per question kind, visual tokens kept after merging (per sample), visual
tokens the layers >= L attend to at the letter's step, prefill seconds and decode seconds per token (per batch of
`--batch-size`, medians over the batches), peak RSS while generating (the process's; on a CPU the libraries and
weights dominate it) and the KV cache the merged prompt needs. The plot: accuracy against visual tokens kept, one
line per P (official variant, published positions), P = 0.8 with `positions: original` dashed, the published setting
(K 0.7, P 0.8) marked.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from lightning_prune.data.synthetic_video import KINDS
from lightning_prune.data.synthetic_video_qa import SyntheticVideoQADataModule, split_batches
from lightning_prune.dycoke.hooks import DyCokeHooks, DyCokeSettings
from lightning_prune.dycoke.probe import GenerationTimer, peak_memory_bytes, reset_peak_memory
from lightning_prune.modules.video_llm import VideoLLM
from lightning_prune.modules.video_training import ASSETS

K_VALUES = (0.0, 0.3, 0.5, 0.7, 0.9)
P_VALUES = (0.0, 0.5, 0.7, 0.8, 0.9)
PUBLISHED = (0.7, 0.8)
ARMS = (("official", "published"), ("refined", "published"), ("official", "original"))  # (variant, positions)


def _kv_bytes(model: torch.nn.Module, tokens: int) -> int:
    text = model.config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * tokens * 4


def run_setting(module: VideoLLM, batches: list[dict], settings: DyCokeSettings | None) -> dict:
    """Accuracy and costs of one setting (None: no DyCoke) over the batches."""
    timer = GenerationTimer(module.model).attach()
    hooks = DyCokeHooks(module.model, settings).install() if settings is not None else None
    correct: dict[str, list[float]] = {kind: [] for kind in KINDS}
    prefill, decode, kept, attended, prompt = [], [], [], [], []
    reset_peak_memory()
    try:
        with torch.inference_mode():
            for batch in batches:
                timer.start()
                predicted = module.answer_indices(batch)
                timing = timer.stop()
                prefill.append(timing.prefill_s)
                decode.append(timing.decode_s_per_token)
                for kind, hit in zip(batch["kind"], (predicted.cpu() == torch.tensor(batch["answer_index"])).tolist(),
                                     strict=True):
                    correct[kind].append(float(hit))
                if hooks is not None:
                    for stats in hooks.pop_stats():
                        kept.append(stats.visual_tokens_after)
                        prompt.append(stats.prompt_tokens_after)
                        last_step = stats.attended_kv_lengths[-1] if stats.attended_kv_lengths else None
                        attended.append(stats.visual_tokens_after - (stats.full_kv_lengths[-1] - last_step)
                                        if last_step is not None else stats.visual_tokens_after)
    finally:
        timer.detach()
        if hooks is not None:
            hooks.remove()
    everything = [hit for hits in correct.values() for hit in hits]
    row = {"accuracy": statistics.fmean(everything),
           "accuracy_per_kind": {kind: statistics.fmean(hits) for kind, hits in correct.items() if hits},
           "prefill_s": statistics.median(prefill), "decode_s_per_token": statistics.median(decode),
           "peak_rss_mb": peak_memory_bytes() / 2**20}
    if kept:
        row.update(visual_tokens_kept=statistics.fmean(kept), visual_tokens_attended_at_answer=statistics.fmean(
            attended), kv_cache_mb=_kv_bytes(module.model, round(statistics.fmean(prompt))) / 2**20)
    return row


def run_family(family: str, samples: int, batch_size: int, root: str, k_values=K_VALUES, p_values=P_VALUES) -> dict:
    module = VideoLLM(checkpoint=family).eval()
    data = SyntheticVideoQADataModule(root=root, family=family, test_samples=max(samples, 250), test_limit=samples,
                                      eval_batch_size=batch_size)
    batches = split_batches(data, "test")
    started = time.perf_counter()
    baseline = run_setting(module, batches, None)
    first = batches[0]
    tokens = module.model_inputs({**first, "videos": first["videos"][:1], "question": first["question"][:1],
                                  "options": first["options"][:1]})["input_ids"]
    video_tokens = int((tokens == module.model.config.video_token_id).sum())
    baseline.update(visual_tokens_kept=video_tokens, visual_tokens_attended_at_answer=video_tokens,
                    kv_cache_mb=_kv_bytes(module.model, tokens.shape[1]) / 2**20)
    grid = []
    for variant, positions in ARMS:
        for k in k_values:
            for p in p_values:
                settings = DyCokeSettings(merging_ratio=k, prune_layer=3, decode_prune_ratio=p, variant=variant,
                                          positions=positions)
                grid.append({"variant": variant, "positions": positions, "K": k, "L": 3, "P": p,
                             **run_setting(module, batches, settings)})
                print(f"{family} {variant} positions={positions} K={k} P={p}: "  # noqa: T201
                      f"acc {grid[-1]['accuracy']:.3f}", flush=True)
    return {"samples": samples, "batch_size": batch_size, "video_tokens": video_tokens, "uncompressed": baseline,
            "grid": grid, "seconds": round(time.perf_counter() - started, 1)}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(results["families"])
    figure, axes = plt.subplots(1, len(families), figsize=(5.5 * len(families), 4.2), squeeze=False)
    for axis, family in zip(axes[0], families, strict=True):
        found = results["families"][family]
        rows = [row for row in found["grid"] if row["variant"] == "official" and row["positions"] == "published"]
        for p in sorted({row["P"] for row in rows}):
            line = sorted((row for row in rows if row["P"] == p), key=lambda row: row["visual_tokens_kept"])
            axis.plot([row["visual_tokens_kept"] for row in line], [100 * row["accuracy"] for row in line],
                      marker="o", label=f"P = {p}")
        original = sorted((row for row in found["grid"] if row["variant"] == "official"
                           and row["positions"] == "original" and row["P"] == PUBLISHED[1]),
                          key=lambda row: row["visual_tokens_kept"])
        if original:
            axis.plot([row["visual_tokens_kept"] for row in original], [100 * row["accuracy"] for row in original],
                      marker="s", linestyle="--", color="black", label=f"P = {PUBLISHED[1]}, positions original")
        for published in [row for row in rows if (row["K"], row["P"]) == PUBLISHED]:
            axis.scatter([published["visual_tokens_kept"]], [100 * published["accuracy"]], s=220, marker="*",
                         color="black", zorder=5, label="published (K 0.7, P 0.8)")
        axis.axhline(100 * found["uncompressed"]["accuracy"], color="grey", linestyle="--", label="uncompressed")
        axis.set_xlabel(f"visual tokens kept after merging (of {found['video_tokens']})")
        axis.set_ylabel("test accuracy (%)")
        axis.set_title(f"{family}, DyCoke official, L = 3 ({found['samples']} questions)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the results")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of accuracy against visual tokens kept")
    parser.add_argument("--families", nargs="+", default=sorted(p.stem for p in ASSETS.glob("*.safetensors")))
    parser.add_argument("--samples", type=int, default=250, help="test questions (first N of the split)")
    parser.add_argument("--batch-size", type=int, default=25, help="questions per generate call")
    parser.add_argument("--root", default="data", help="data folder of the synthetic test split")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--k-values", type=float, nargs="+", default=list(K_VALUES), help="merging ratios K")
    parser.add_argument("--p-values", type=float, nargs="+", default=list(P_VALUES), help="decode prune ratios P")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {"machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch thread(s), {platform.system()}",
               "torch": torch.__version__, "families": {}}
    for family in args.families:
        results["families"][family] = run_family(family, args.samples, args.batch_size, args.root, args.k_values,
                                                 args.p_values)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    if args.plot is not None:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
