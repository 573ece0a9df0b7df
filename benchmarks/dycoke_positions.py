"""What DyCoke's position rule costs the trained tiny models: the published renumbering (`positions: published`)
against keeping every merged token's position in the whole prompt (`positions: original`).

    python benchmarks/dycoke_positions.py --json benchmarks/results/dycoke_positions_cpu.json [--samples 250]

The published LLaVA code builds the shorter, merged prompt and numbers it 0, 1, ... as if the dropped tokens had never
been there; decode steps continue from the merged length. `positions: original` (a DyCoke setting) gives every kept
token the position it had in the whole prompt, and decode steps continue from the whole prompt's length. The kept
tokens and the decode-time selection stay the same. On the Qwen-VL families only the 1-D text row that `generate` adds
for masks differs (their (t, h, w) ids stay original under both rules). Accuracy on the synthetic test split (seed 3),
overall and per kind, L = 3, variant `official`, at the settings below, for each shipped trained family.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch

from lightning_prune.data.synthetic_video_qa import SyntheticVideoQADataModule, split_batches
from lightning_prune.dycoke.families.base import POSITION_RULES
from lightning_prune.dycoke.hooks import DyCokeHooks, DyCokeSettings
from lightning_prune.modules.video_llm import VideoLLM
from lightning_prune.modules.video_training import ASSETS

SETTINGS = ((0.3, 0.0), (0.5, 0.0), (0.7, 0.0), (0.9, 0.0), (0.7, 0.8))


def accuracy(module: VideoLLM, batches: list[dict], k: float, p: float, positions: str) -> dict:
    hits: dict[str, list[bool]] = {}
    settings = DyCokeSettings(merging_ratio=k, prune_layer=3, decode_prune_ratio=p, variant="official",
                              positions=positions)
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
    parser.add_argument("--families", nargs="+", default=sorted(path.stem for path in ASSETS.glob("*.safetensors")))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {"machine": f"{platform.machine()} CPU, 1 torch thread", "samples": args.samples, "rows": []}
    for family in args.families:
        module = VideoLLM(checkpoint=family).eval()
        batches = split_batches(SyntheticVideoQADataModule(root=args.root, family=family, test_limit=args.samples,
                                                           eval_batch_size=25), "test")
        for positions in POSITION_RULES:
            for k, p in SETTINGS:
                results["rows"].append({"family": family, "positions": positions,
                                        **accuracy(module, batches, k, p, positions)})
                print(json.dumps(results["rows"][-1]), flush=True)  # noqa: T201 (a benchmark)
    args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
