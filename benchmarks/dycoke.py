"""Benchmark DyCoke against the full model: latency (prefill, per-token decode, end to end) and inference memory.

    python benchmarks/dycoke.py --json runs/bench/dycoke.json                        # CPU: random mid-size model
    python benchmarks/dycoke.py --json out.json --family qwen2_5_vl --variant official --batch-size 4
    python benchmarks/dycoke.py --json out.json --model llava-hf/llava-onevision-qwen2-0.5b-ov-hf --device cuda

Random models (no --model): per family an LLM of width 512 x 8 layers (grouped KV heads, a 32k vocabulary) that
dominates a 1-layer vision tower of the family's real geometry: LLaVA-OneVision 384 x 384 frames -> 196 tokens,
LLaVA-NeXT-Video 336 x 336 -> 144, Qwen2.5-VL 448 x 448 -> 256 per temporal patch of 2 frames, Qwen3-VL 512 x 512 ->
256 per temporal patch. Same synthetic moving-shapes video (32 frames by default) for every sample, questions of
different lengths (so batches are padded), greedy decoding of exactly `--new-tokens` tokens.

Memory: each variant generates once in its own process; generation-added memory is the peak during generation minus
the footprint once the model is loaded and the inputs are prepared (CUDA: `max_memory_allocated` minus the allocated
bytes then; CPU: peak RSS minus the RSS then, with glibc's mmap threshold fixed so freed tensors leave the RSS). On a
CPU the libraries' and weights' fixed footprint dwarfs what DyCoke changes, so the ratio is taken on what generation
adds; absolute peaks are reported beside it. Latency: a third process alternates baseline and DyCoke generations
(`--repeats` each, medians), so both see the same machine load. DyCoke's own decode-step work (scoring, top-k, cache
selection) is timed in a last, profiled run and reported as a share of its decode step. The JSON carries
`latency_ratio` (end to end, baseline / DyCoke) and `memory_ratio` (generation-added memory) at its top level.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_TEXT = {"hidden_size": 512, "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 8,
         "num_key_value_heads": 2, "vocab_size": 32000}
_TINY_VISION = {"hidden_size": 64, "intermediate_size": 128}
# The random model per family when no --model is given (see the module docstring).
MID_SIZE = {
    "llava_onevision": {"text_config": _TEXT, "vision_config": {
        **_TINY_VISION, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 384, "patch_size": 14}},
    "llava_next_video": {"text_config": _TEXT, "vision_config": {
        **_TINY_VISION, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 336, "patch_size": 14}},
    "qwen2_5_vl": {"text_config": {**_TEXT, "rope_parameters": {
        "rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]}},
        "vision_config": {**_TINY_VISION, "depth": 1, "num_heads": 2, "out_hidden_size": 512, "patch_size": 14,
                          "window_size": 112}, "frame_side": 448},
    "qwen3_vl": {"text_config": {**_TEXT, "head_dim": 64, "rope_parameters": {
        "rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [8, 12, 12], "mrope_interleaved": True}},
        "vision_config": {**_TINY_VISION, "depth": 1, "num_heads": 2, "out_hidden_size": 512, "patch_size": 16,
                          "num_position_embeddings": 2304, "deepstack_visual_indexes": [0]}, "frame_side": 512},
}
_QUESTIONS = ["Which way does the red square move?", "What colour is the square that drifts slowly?",
              "Which shape crosses the frame first, and where does it go?", "How many squares are there?"]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the results")
    parser.add_argument("--model", default=None, help="Hub id or folder; default: the random mid-size model")
    parser.add_argument("--family", default=None, choices=sorted(MID_SIZE),
                        help="family of the random model (default llava_onevision), or forced for --model")
    parser.add_argument("--variant", default="official", choices=["official", "refined"], help="DyCoke's variant")
    parser.add_argument("--batch-size", type=int, default=1, help="samples per generation (padded prompts)")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="timed generations per variant")
    parser.add_argument("--merging-ratio", type=float, default=0.7)
    parser.add_argument("--prune-layer", type=int, default=3)
    parser.add_argument("--decode-prune-ratio", type=float, default=0.8)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--part", choices=["baseline", "dycoke", "latency"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _prepare(args: argparse.Namespace):
    """The model (loaded on the device) and one prepared batch of inputs."""
    import torch

    from lightning_prune.data.video_qa import moving_shapes_frames, read_video_frames, write_video
    from lightning_prune.modules.video_llm import VideoLLM

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        module = VideoLLM(model_name_or_path=args.model, dtype=args.dtype, family=args.family)
    else:
        family = args.family or "llava_onevision"
        module = VideoLLM(tiny_config=MID_SIZE[family], dtype=args.dtype, family=family)
    module = module.to(torch.device(args.device)).eval()
    with tempfile.TemporaryDirectory() as folder:
        side = 192 if args.model else MID_SIZE[args.family or "llava_onevision"].get("frame_side", 192)
        video = write_video(Path(folder) / "shapes.mp4", moving_shapes_frames(2 * args.frames, side, "right"))
        frames = read_video_frames(video, args.frames)
    size = args.batch_size
    batch = {"videos": [frames] * size, "question": [_QUESTIONS[i % len(_QUESTIONS)] for i in range(size)],
             "options": [["left", "right", "up", "down"]] * size}
    return module.model, module.model_inputs(batch)


def _generate(model, inputs, new_tokens: int):
    import torch

    with torch.inference_mode():
        return model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)


def measure_memory(args: argparse.Namespace) -> dict:
    """One process, one variant, one generation: inference memory = peak - footprint after load."""
    import torch

    from lightning_prune.dycoke.hooks import DyCokeHooks
    from lightning_prune.dycoke.probe import peak_memory_bytes, reset_peak_memory, resident_memory_bytes

    model, inputs = _prepare(args)
    if args.part == "dycoke":
        DyCokeHooks(model, _settings(args)).install()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    loaded = torch.cuda.memory_allocated(device) if device.type == "cuda" else resident_memory_bytes()
    reset_peak_memory(device)
    tokens = _generate(model, inputs, args.new_tokens)
    peak = peak_memory_bytes(device)
    prompt = inputs["input_ids"].shape[1]
    return {"memory_after_load_mb": loaded / 2**20, "peak_memory_mb": peak / 2**20,
            "inference_memory_mb": (peak - loaded) / 2**20, "prompt_tokens": int(prompt),
            "tokens": tokens[:, prompt:].tolist()}


def measure_latency(args: argparse.Namespace) -> dict:
    """Paired timings in one process: baseline and DyCoke generations alternate, so both see the same machine load."""
    from lightning_prune.dycoke.hooks import DyCokeHooks
    from lightning_prune.dycoke.probe import GenerationTimer

    model, inputs = _prepare(args)
    hooks = DyCokeHooks(model, _settings(args))
    timer = GenerationTimer(model.model).attach()
    with hooks:  # warm-up (the cheaper variant): first calls allocate and initialise kernels
        _generate(model, inputs, 2)
    hooks.pop_stats()
    runs = {"baseline": [], "dycoke": []}
    for repeat in range(args.repeats):
        for variant in ("baseline", "dycoke") if repeat % 2 == 0 else ("dycoke", "baseline"):
            if variant == "dycoke":
                hooks.install()
            timer.start()
            _generate(model, inputs, args.new_tokens)
            runs[variant].append(timer.stop())
            if variant == "dycoke":
                stats = hooks.pop_stats()[-1]
                hooks.remove()
    hooks.pruning.profile = True
    hooks.install()
    timer.start()
    _generate(model, inputs, args.new_tokens)
    profiled, profile = timer.stop(), hooks.pop_stats()[-1]
    hooks.remove()

    def medians(timings) -> dict:
        return {"prefill_s": statistics.median(t.prefill_s for t in timings),
                "decode_s_per_token": statistics.median(t.decode_s_per_token for t in timings),
                "end_to_end_s": statistics.median(t.total_s for t in timings)}

    per_step = profile.overhead_s / max(len(profile.full_kv_lengths), 1)
    return {
        "baseline": medians(runs["baseline"]),
        "dycoke": {
            **medians(runs["dycoke"]),
            "visual_tokens_before": stats.visual_tokens_before,
            "visual_tokens_after": stats.visual_tokens_after,
            "llm_prompt_tokens": stats.prompt_tokens_after,
            "attended_kv_length_mean": statistics.mean(stats.attended_kv_lengths),
            "full_kv_length_mean": statistics.mean(stats.full_kv_lengths),
            "similar_steps": stats.reused_steps,
            "decode_steps": len(stats.full_kv_lengths),
            "dycoke_step_work_s": per_step,
            "dycoke_step_work_share": per_step / profiled.decode_s_per_token,
        },
    }


def _settings(args: argparse.Namespace):
    from lightning_prune.dycoke.hooks import DyCokeSettings

    return DyCokeSettings(args.merging_ratio, args.prune_layer, args.decode_prune_ratio, variant=args.variant)


def _machine(device: str, threads: int) -> dict:
    import torch
    import transformers

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": threads or torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "device": device}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    if args.part:
        result = measure_latency(args) if args.part == "latency" else measure_memory(args)
        args.json.write_text(json.dumps(result))
        return result
    forwarded = list(argv if argv is not None else sys.argv[1:])
    json_at = forwarded.index("--json")
    forwarded = forwarded[:json_at] + forwarded[json_at + 2 :]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    memory_env = dict(env)
    if not args.device.startswith("cuda"):
        # For the memory runs only: a fixed mmap threshold makes glibc hand large freed blocks back at once, so the
        # peak RSS follows the tensors alive at the peak rather than the allocator's high-water marks. (It would
        # also slow every large allocation down, so the latency run keeps glibc's defaults.)
        memory_env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    parts = {}
    for name in ("baseline", "dycoke", "latency"):
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
            part = Path(handle.name)
        command = [sys.executable, __file__, *forwarded, "--json", str(part), "--part", name]
        subprocess.run(command, check=True, env=env if name == "latency" else memory_env)
        parts[name] = json.loads(part.read_text())
        part.unlink()
    base = {**parts["baseline"], **parts["latency"]["baseline"]}
    dycoke = {**parts["dycoke"], **parts["latency"]["dycoke"]}
    family = args.family or ("llava_onevision" if not args.model else None)
    ratios = {
        "end_to_end_latency": base["end_to_end_s"] / dycoke["end_to_end_s"],
        "inference_memory": base["inference_memory_mb"] / dycoke["inference_memory_mb"],
    }
    summary = {
        "latency_ratio": ratios["end_to_end_latency"],
        "memory_ratio": ratios["inference_memory"],
        "family": family,
        "variant": args.variant,
        "batch_size": args.batch_size,
        "model": args.model or f"random {family} " + json.dumps(MID_SIZE[family]),
        "frames": args.frames,
        "new_tokens": args.new_tokens,
        "settings": {"merging_ratio": args.merging_ratio, "prune_layer": args.prune_layer,
                     "decode_prune_ratio": args.decode_prune_ratio, "window": 4, "reuse_threshold": 0.9,
                     "variant": args.variant},
        "machine": _machine(args.device, args.threads),
        "ratios": {
            "end_to_end_latency": base["end_to_end_s"] / dycoke["end_to_end_s"],
            "prefill_latency": base["prefill_s"] / dycoke["prefill_s"],
            "decode_latency_per_token": base["decode_s_per_token"] / dycoke["decode_s_per_token"],
            "inference_memory": base["inference_memory_mb"] / dycoke["inference_memory_mb"],
            "peak_memory": base["peak_memory_mb"] / dycoke["peak_memory_mb"],
        },
        "dycoke_step_work_share": dycoke["dycoke_step_work_share"],
        "same_tokens": base["tokens"] == dycoke["tokens"],
        "baseline": base,
        "dycoke": dycoke,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    keys = ("latency_ratio", "memory_ratio", "ratios", "dycoke_step_work_share", "same_tokens")
    print(json.dumps({key: summary[key] for key in keys}, indent=2))
    return summary


if __name__ == "__main__":
    main()
