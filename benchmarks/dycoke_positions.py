"""What DyCoke's position rule costs the trained tiny LLaVA-OneVision: the published renumbering against keeping
the merged tokens' original 1-D positions.

    python benchmarks/dycoke_positions.py --json benchmarks/results/dycoke_positions_cpu.json [--samples 250]

The published LLaVA code builds the shorter, merged prompt and numbers it 0, 1, ... as if the dropped tokens had never
been there (`FamilyAdapter.merged_positions`; decode steps continue from the merged length). The experiment here gives
every kept token the position it had in the whole prompt, and lets the decode steps continue from the whole prompt's
length, by swapping those two adapter rules for the run. The kept tokens and the decode-time selection stay the same.
It is a measurement, not a shipped option. Accuracy on the synthetic test split (seed 3), overall and per kind, at
K in {0.3, 0.7} x P in {0, 0.8}, L = 3, variant `official`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch

from lightning_prune.data.synthetic_video_qa import SyntheticVideoQADataModule, split_batches
from lightning_prune.dycoke.families import get_family
from lightning_prune.dycoke.hooks import DyCokeHooks, DyCokeSettings
from lightning_prune.modules.video_llm import VideoLLM

SETTINGS = ((0.3, 0.0), (0.7, 0.0), (0.7, 0.8))


def _keep_merged(self, base, kwargs, original, sources, removed) -> None:
    if kwargs.get("position_ids") is not None:
        kwargs["position_ids"] = original["position_ids"].gather(1, sources)


def _keep_decode(self, kwargs, removed) -> None:
    return None  # generate's decode positions already count the whole prompt


def accuracy(module: VideoLLM, batches: list[dict], k: float, p: float) -> dict:
    hits: dict[str, list[bool]] = {}
    settings = DyCokeSettings(merging_ratio=k, prune_layer=3, decode_prune_ratio=p, variant="official")
    with torch.inference_mode(), DyCokeHooks(module.model, settings) as hooks:
        for batch in batches:
            predicted = module.answer_indices(batch)
            for kind, hit in zip(batch["kind"], (predicted == torch.tensor(batch["answer_index"])).tolist(),
                                 strict=True):
                hits.setdefault(kind, []).append(hit)
            hooks.pop_stats()
    every = [hit for kind_hits in hits.values() for hit in kind_hits]
    return {"K": k, "P": p, "accuracy": statistics.fmean(every),
            "accuracy_per_kind": {kind: statistics.fmean(kind_hits) for kind, kind_hits in hits.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--samples", type=int, default=250)
    parser.add_argument("--root", default="data")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    module = VideoLLM(checkpoint="llava_onevision").eval()
    batches = split_batches(SyntheticVideoQADataModule(root=args.root, family="llava_onevision",
                                                       test_limit=args.samples, eval_batch_size=25), "test")
    adapter = type(get_family("llava_onevision"))
    published = adapter.merged_positions, adapter.decode_positions
    results = {"machine": f"{platform.machine()} CPU, 1 torch thread", "samples": args.samples, "rows": []}
    for rule in ("published", "original"):
        if rule == "original":
            adapter.merged_positions, adapter.decode_positions = _keep_merged, _keep_decode
        try:
            for k, p in SETTINGS:
                results["rows"].append({"positions": rule, **accuracy(module, batches, k, p)})
                print(json.dumps(results["rows"][-1]), flush=True)  # noqa: T201 (a benchmark)
        finally:
            adapter.merged_positions, adapter.decode_positions = published
    args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
