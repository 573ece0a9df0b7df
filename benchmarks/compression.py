"""Every token-compression method x family at equal retained-visual-token budgets: latency, memory, kept tokens.

    python benchmarks/compression.py --json benchmarks/results/compression_cpu.json --frames 32 --threads 2
    python benchmarks/compression.py --json out.json --families qwen2_5_vl --methods fastv random --budgets 0.25
    python benchmarks/compression.py --json out.json --trained configs/dycoke/trained_qwen2_5_vl.yaml  # + accuracy
    python benchmarks/compression.py --plot README_compression.png --from-json out.json  # the plot alone

Models: the random models of `benchmarks/dycoke.py` (per family an LLM of width 512 x 8 layers under a 1-layer vision
tower of the family's real geometry), one synthetic moving-shapes video, greedy decoding of exactly `--new-tokens`.
Per family one process builds the model once, warms it up, then runs the uncompressed model and every method at every
budget (`CompressionMethod.at_budget`: the share of visual tokens retained; see the README for what each method
retains where), `--repeats` times in turn (medians), so all see the same machine load. Generation-added memory: the
process's peak during the generation minus its footprint just before (CPU: peak RSS, reset through
`/proc/self/clear_refs`, glibc's mmap threshold fixed so freed tensors leave the RSS; CUDA: the allocator's peak).

`--trained CONFIG...` adds accuracy: each config (a project YAML with a trained `VideoLLM` and a QA data module whose
`test` logs `test/acc` and `test/acc_<kind>`) is tested without compression and with every method at every budget.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_HERE = Path(__file__).resolve().parent
BUDGETS = (0.35, 0.25, 0.15)


def _dycoke_benchmark():
    spec = importlib.util.spec_from_file_location("dycoke_benchmark", _HERE / "dycoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parse(argv: list[str] | None) -> argparse.Namespace:
    from lightning_prune.compression import METHOD_NAMES

    bench = _dycoke_benchmark()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="where to write the results")
    parser.add_argument("--families", nargs="*", default=sorted(bench.MID_SIZE), choices=sorted(bench.MID_SIZE),
                        help="families of the latency runs (none: accuracy only)")
    parser.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=list(METHOD_NAMES))
    parser.add_argument("--budgets", nargs="+", type=float, default=list(BUDGETS))
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--positions", default="published", choices=["published", "original"],
                        help="position rule of the methods that shorten the prompt before the LLM (DyCoke included)")
    parser.add_argument("--trained", nargs="*", type=Path, default=[], help="trained configs: adds accuracy")
    parser.add_argument("--data-args", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of the trained configs' data init_args (e.g. test_limit=125)")
    parser.add_argument("--plot", type=Path, help="write the accuracy / speed-up plot here")
    parser.add_argument("--from-json", type=Path, help="plot from an earlier run's JSON instead of running")
    parser.add_argument("--part", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.json and not args.from_json:
        parser.error("--json is required (or --from-json with --plot)")
    for budget in args.budgets:
        if not 0.0 < budget <= 1.0:
            parser.error(f"`--budgets` must be in (0, 1], got {budget}.")
    return args


def _variants(args) -> list[tuple[str, float | None]]:
    return [("none", None)] + [(name, budget) for name in args.methods for budget in args.budgets]


def _method(name: str, budget: float, positions: str = "published"):
    """The method at `budget`; `positions` goes to the methods that shorten the prompt before the LLM (the others
    keep their kept tokens' positions anyway)."""
    import dataclasses

    from lightning_prune.compression import method_class

    method = method_class(name).at_budget(budget)
    if "positions" in method.settings():
        method = dataclasses.replace(method, positions=positions)
    return method


def measure_family(args: argparse.Namespace, family: str) -> list[dict]:
    """One family: every variant, `--repeats` rounds (the variants in turn), medians."""
    import torch

    from lightning_prune.dycoke.probe import (
        GenerationTimer,
        peak_memory_bytes,
        reset_peak_memory,
        resident_memory_bytes,
    )

    bench = _dycoke_benchmark()
    bench_args = argparse.Namespace(model=None, family=family, dtype="auto", device=args.device, threads=args.threads,
                                    frames=args.frames, batch_size=args.batch_size)
    model, inputs = bench._prepare(bench_args)
    device = torch.device(args.device)
    timer = GenerationTimer(model.model).attach()
    bench._generate(model, inputs, 2)  # warm-up
    runs: dict[tuple, list] = {variant: [] for variant in _variants(args)}
    info: dict[tuple, dict] = {}
    for _ in range(args.repeats):
        for name, budget in runs:
            hooks = None if name == "none" else _method(name, budget, args.positions).make_hooks(model).install()
            if device.type == "cuda":
                torch.cuda.synchronize()
            loaded = torch.cuda.memory_allocated(device) if device.type == "cuda" else resident_memory_bytes()
            reset_peak_memory(device)
            timer.start()
            bench._generate(model, inputs, args.new_tokens)
            timing = timer.stop()
            added = (peak_memory_bytes(device) - loaded) / 2**20
            runs[(name, budget)].append((timing, added))
            if hooks is not None:
                stats = hooks.pop_stats()[-1]
                hooks.remove()
                info[(name, budget)] = {
                    "settings": hooks_settings(name, budget, args.positions),
                    "visual_tokens_before": stats.visual_tokens_before,
                    "visual_tokens_after": stats.visual_tokens_after,
                    "llm_prompt_tokens": stats.prompt_tokens_after,
                    "attended_kv_length_mean": statistics.mean(stats.attended_kv_lengths or stats.full_kv_lengths),
                }
    timer.detach()
    rows = []
    for (name, budget), measured in runs.items():
        timings = [timing for timing, _ in measured]
        rows.append({
            "family": family, "method": name, "budget": budget,
            "prefill_s": statistics.median(t.prefill_s for t in timings),
            "decode_s_per_token": statistics.median(t.decode_s_per_token for t in timings),
            "end_to_end_s": statistics.median(t.total_s for t in timings),
            "generation_added_memory_mb": statistics.median(added for _, added in measured),
            **info.get((name, budget), {"visual_tokens_before": int((inputs["input_ids"][0] ==
                                                                      model.config.video_token_id).sum())}),
        })
    base = rows[0]
    base["visual_tokens_after"] = base["visual_tokens_before"]
    for row in rows:
        row["speedup_end_to_end"] = base["end_to_end_s"] / row["end_to_end_s"]
        row["visual_tokens_kept_fraction"] = row["visual_tokens_after"] / row["visual_tokens_before"]
    return rows


def hooks_settings(name: str, budget: float, positions: str = "published") -> dict:
    return _method(name, budget, positions).settings()


def measure_accuracy(args: argparse.Namespace, config: Path) -> list[dict]:
    """Test a trained config without compression and with every method at every budget: test/acc and per kind."""
    import importlib

    import lightning as L
    import yaml

    from lightning_prune.callbacks.compression import CompressionCallback
    from lightning_prune.modules.video_llm import VideoLLM

    raw = yaml.safe_load(config.read_text())

    def build(section: dict, expected: type):
        module_name, _, class_name = section["class_path"].rpartition(".")
        found = getattr(importlib.import_module(module_name), class_name, None)
        if not (isinstance(found, type) and issubclass(found, expected)):  # a config never calls a function
            raise SystemExit(f"{config}: `class_path` must name a subclass of {expected.__name__}, "
                             f"got {section['class_path']!r}.")
        return found(**(section.get("init_args") or {}))

    L.seed_everything(raw.get("seed_everything", 0))
    overrides = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.data_args)}
    raw["data"]["init_args"] = {**(raw["data"].get("init_args") or {}), **overrides}
    module, data = build(raw["model"], VideoLLM), build(raw["data"], L.LightningDataModule)
    rows = []
    for name, budget in _variants(args):
        callbacks = [] if name == "none" else [CompressionCallback(_method(name, budget, args.positions))]
        trainer = L.Trainer(accelerator=args.device if args.device == "cpu" else "gpu", devices=1, logger=False,
                            callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False)
        row = {"config": str(config), "method": name, "budget": budget, "positions": args.positions}
        try:
            metrics = trainer.test(module, datamodule=data, verbose=False)[0]
        except ValueError as error:  # a method's own refusal at this budget (FrameFusion: "cost is too small")
            rows.append({**row, "refused": str(error)})
            continue
        rows.append({**row, **{key: float(value) for key, value in metrics.items() if key.startswith("test/acc")}})
    return rows


def plot(summary: dict, path: Path) -> None:
    """Accuracy against end-to-end speed-up, one point per method and budget (speed-up alone if no accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speed = {}
    for row in summary["latency"]:
        speed.setdefault((row["method"], row["budget"]), []).append(row["speedup_end_to_end"])
    accuracy = {}
    for row in summary.get("accuracy", []):
        if "test/acc" in row:
            accuracy.setdefault((row["method"], row["budget"]), []).append(row["test/acc"])
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    methods = sorted({method for method, _ in speed})
    for index, method in enumerate(methods):
        points = sorted((budget or 1.0, statistics.mean(values), statistics.mean(accuracy[(method, budget)])
                         if (method, budget) in accuracy else None) for (m, budget), values in speed.items()
                        if m == method)
        xs = [point[1] for point in points]
        ys = [point[2] if point[2] is not None else point[0] for point in points]
        axis.plot(xs, ys, marker="os^vDP*"[index % 7], label=method)
        for budget, x, y in points:
            axis.annotate(f"{budget:.0%}", (x, y if y is not None else budget), fontsize=7, xytext=(3, 3),
                          textcoords="offset points")
    axis.set_xlabel("end-to-end speed-up over the uncompressed model (mean over families)")
    axis.set_ylabel("accuracy (trained tiny models)" if accuracy else "retained visual-token budget")
    axis.set_title(summary.get("title", "Token compression at equal budgets"), fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    if args.from_json:
        summary = json.loads(args.from_json.read_text())
        if args.plot:
            plot(summary, args.plot)
        print(compact_table(summary))
        return summary
    if args.part:
        kind, _, target = args.part.partition(":")
        rows = measure_family(args, target) if kind == "family" else measure_accuracy(args, Path(target))
        args.json.write_text(json.dumps(rows))
        return {"rows": rows}
    forwarded = list(argv if argv is not None else sys.argv[1:])
    json_at = forwarded.index("--json")
    forwarded = forwarded[:json_at] + forwarded[json_at + 2:]
    env = {**os.environ, "PYTHONPATH": str(_HERE.parent), "MALLOC_MMAP_THRESHOLD_": "131072"}
    parts = [f"family:{family}" for family in args.families] + [f"accuracy:{config}" for config in args.trained]
    results: dict[str, list] = {"latency": [], "accuracy": []}
    for part in parts:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
            out = Path(handle.name)
        subprocess.run([sys.executable, __file__, *forwarded, "--json", str(out), "--part", part], check=True,
                       env=env)
        results["latency" if part.startswith("family") else "accuracy"] += json.loads(out.read_text())
        out.unlink()
    bench = _dycoke_benchmark()
    summary = {
        "title": f"{args.frames} frames, {args.new_tokens} new tokens, batch {args.batch_size}, {args.device}",
        "frames": args.frames, "new_tokens": args.new_tokens, "batch_size": args.batch_size,
        "repeats": args.repeats, "budgets": args.budgets,
        "models": {family: "random " + json.dumps(bench.MID_SIZE[family]) for family in args.families},
        "machine": bench._machine(args.device, args.threads),
        **results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    if args.plot:
        plot(summary, args.plot)
    print(table(summary))
    print(compact_table(summary))
    return summary


def table(summary: dict) -> str:
    """The README's markdown table: one row per family, method and budget."""
    accuracy = {(row["method"], row["budget"]): row for row in summary.get("accuracy", [])}
    lines = ["| family | method | budget | visual tokens kept | prefill s | decode ms/token | end-to-end s | "
             "speed-up | added memory MB | accuracy |", "|" + "---|" * 10]
    for row in summary["latency"]:
        acc = accuracy.get((row["method"], row["budget"]), {}).get("test/acc")
        budget = "-" if row["budget"] is None else f"{row['budget']:.0%}"
        lines.append(
            f"| {row['family']} | {row['method']} | {budget} | "
            f"{row['visual_tokens_after']} / {row['visual_tokens_before']} | {row['prefill_s']:.2f} | "
            f"{1000 * row['decode_s_per_token']:.0f} | {row['end_to_end_s']:.2f} | {row['speedup_end_to_end']:.2f}x | "
            f"{row['generation_added_memory_mb']:.0f} | {'-' if acc is None else f'{acc:.3f}'} |")
    return "\n".join(lines)


def compact_table(summary: dict) -> str:
    """One row per method and budget, one column per family: end-to-end speed-up (visual tokens the last LLM layer
    keeps / before), then the accuracy on each trained config when measured."""
    families = sorted({row["family"] for row in summary["latency"]})
    configs = sorted({row["config"] for row in summary.get("accuracy", []) if "config" in row})
    accuracy = {(row.get("config"), row["method"], row["budget"]):
                "refused" if "refused" in row else row.get("test/acc") for row in summary.get("accuracy", [])}
    cells: dict[tuple, dict] = {}
    for row in summary["latency"]:
        cells.setdefault((row["method"], row["budget"]), {})[row["family"]] = (
            f"{row['speedup_end_to_end']:.2f}x ({row['visual_tokens_after']}/{row['visual_tokens_before']})")
    for row in summary.get("accuracy", []):
        cells.setdefault((row["method"], row["budget"]), {})
    names = [Path(config).stem for config in configs] or ["accuracy"]
    lines = ["| method | budget | " + " | ".join(families + [f"acc. {name}" for name in names]) + " |",
             "|" + "---|" * (len(families) + len(names) + 2)]
    for (method, budget), by_family in cells.items():
        scores = [accuracy.get((config, method, budget)) for config in configs] or [
            accuracy.get((None, method, budget))]
        budget_text = "-" if budget is None else f"{budget:.0%}"
        lines.append(f"| {method} | {budget_text} | " + " | ".join(
            [by_family.get(family, "-") for family in families]
            + ["-" if score is None else score if isinstance(score, str) else f"{score:.3f}" for score in scores])
            + " |")
    return "\n".join(lines)


def kinds_table(summary: dict, budget: float) -> str:
    """Accuracy per question kind at one budget, one row per trained config and method."""
    rows = [row for row in summary.get("accuracy", []) if row["budget"] in (None, budget)]
    kinds = sorted({key[len("test/acc_"):] for row in rows for key in row if key.startswith("test/acc_")})
    lines = ["| model | method | budget | all | " + " | ".join(kinds) + " |", "|" + "---|" * (len(kinds) + 4)]
    for row in rows:
        name = Path(row.get("config", "")).stem
        budget_text = "-" if row["budget"] is None else f"{row['budget']:.0%}"
        if "refused" in row:  # the method's own refusal at this budget, e.g. FrameFusion's "cost is too small"
            lines.append(f"| {name} | {row['method']} | {budget_text} | refused | " + " | ".join("-" for _ in kinds)
                         + " |")
            continue
        lines.append(f"| {name} | {row['method']} | {budget_text} | {row['test/acc']:.3f} | "
                     + " | ".join(f"{row.get(f'test/acc_{kind}', float('nan')):.2f}" for kind in kinds) + " |")
    return "\n".join(lines)

if __name__ == "__main__":
    main()
