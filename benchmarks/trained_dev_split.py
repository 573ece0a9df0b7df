"""Choose among trained tiny video models on a development split, never on the test split.

    python benchmarks/trained_dev_split.py --asset llava_onevision
    python benchmarks/trained_dev_split.py --ckpt runs/<run>/lightning_logs/version_0/checkpoints/<last>.ckpt

For a shipped asset or a fit's checkpoint: accuracy overall and per
question kind on the synthetic split of seed 4 (250 questions; train is 1, validation 2, test 3), uncompressed, at
DyCoke's published setting (K 0.7, L 3, P 0.8, the published position rule) and with `positions="original"`; and how
well a linear probe reads each frame token's place in its frame from the token alone (the LLM's input tokens of the
first `--probe-batches` batches; least squares, 70/30 split of the tokens): R² of its row and column and the share of
cells it gets right (chance: one over the tokens per frame). The README's "Places in the tokens" table comes from it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

DEV_SEED = 4


def load(asset: str | None, ckpt: Path | None):
    from lightning_prune.modules import VideoLLM

    if asset is not None:
        return VideoLLM(checkpoint=asset, max_new_tokens=10)
    module = VideoLLM.load_from_checkpoint(ckpt, map_location="cpu", max_new_tokens=10)
    module.model.half().float()  # what the shipped half-precision asset will answer
    return module


def data(family: str, root: str):
    from lightning_prune.data import SyntheticVideoQADataModule

    return SyntheticVideoQADataModule(root=root, num_frames=16, frame_size=32, family=family, test_samples=250,
                                      test_seed=DEV_SEED, val_seed=DEV_SEED + 1, batch_size=25)


def accuracies(module, root: str) -> dict:
    import lightning as L

    from lightning_prune.callbacks import DyCoke

    results = {}
    for name, callbacks in (("uncompressed", []), ("published", [DyCoke()]),
                            ("positions_original", [DyCoke(positions="original")])):
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                            callbacks=callbacks)
        (measured,) = trainer.test(module, data(module.family.name, root), verbose=False)
        results[name] = {key.removeprefix("test/"): round(value, 4) for key, value in measured.items()}
    return results


def place_probe(module, root: str, batches: int) -> dict:
    """How well a linear map reads a frame token's row, column and cell from the token (the LLM's input)."""
    datamodule = data(module.family.name, root)
    datamodule.prepare_data()
    datamodule.setup("test")
    base = module.family.find_base(module.model)
    tokens = []
    with torch.inference_mode():
        for index, batch in enumerate(datamodule.test_dataloader()):
            if index == batches:
                break
            video = module.family.encode_video(base, module.model_inputs(batch))
            tokens.append(torch.cat(video.frames).float())  # [frames, N, D]
    features = torch.cat(tokens)
    count, per_frame = features.shape[:2]
    side = round(per_frame**0.5)
    cells = torch.arange(per_frame).repeat(count)
    inputs = torch.cat([features.reshape(count * per_frame, -1), torch.ones(count * per_frame, 1)], dim=1)
    train = torch.randperm(len(cells), generator=torch.Generator().manual_seed(0)) < 0.7 * len(cells)

    def fit(targets: torch.Tensor) -> torch.Tensor:
        weights = torch.linalg.lstsq(inputs[train], targets[train]).solution
        return inputs[~train] @ weights

    result = {"tokens": int(len(cells)), "tokens_per_frame": per_frame}
    for name, target in (("row", cells // side), ("column", cells % side)):
        truth = target[~train].float()
        predicted = fit(target.float()[:, None]).squeeze(1)
        residual, spread = ((predicted - truth) ** 2).sum(), ((truth - truth.mean()) ** 2).sum()
        result[f"{name}_r2"] = round(float(1 - residual / spread), 4)
    scores = fit(torch.nn.functional.one_hot(cells, per_frame).float())
    result["cell_accuracy"] = round(float((scores.argmax(1) == cells[~train]).float().mean()), 4)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--asset", help="a shipped trained model (llava_onevision, qwen2_5_vl, ...)")
    source.add_argument("--ckpt", type=Path, help="a fit's Lightning checkpoint")
    parser.add_argument("--root", default="data", help="data folder of the synthetic splits (default: data)")
    parser.add_argument("--probe-batches", type=int, default=4, help="batches of 25 videos for the place probe")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    module = load(args.asset, args.ckpt).eval()
    results = {"model": args.asset or str(args.ckpt), "split_seed": DEV_SEED,
               "accuracy": accuracies(module, args.root), "place_probe": place_probe(module, args.root,
                                                                                       args.probe_batches)}
    text = json.dumps(results, indent=1)
    print(text)  # noqa: T201
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
