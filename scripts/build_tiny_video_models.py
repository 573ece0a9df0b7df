"""Train the tiny video LLMs shipped in `lightning_prune/data/assets/tiny_video/<family>.safetensors`.

For each family this runs `lightning-prune fit --config configs/video/train_tiny_<family>.yaml` in-process (the
config's `seed_everything`; the synthetic splits come from their own seeds, train 1, validation 2, test 3),
writes the trained weights in half precision with the metadata `VideoLLM(checkpoint=...)` rebuilds the model from,
then loads the written file back and prints its accuracy on the test split (overall and per question kind).
Training runs on one CPU thread: the same seed and thread count give the same file. Run from the repository root:

    python scripts/build_tiny_video_models.py                          # every family with a training config
    python scripts/build_tiny_video_models.py --family qwen2_5_vl      # one
    python scripts/build_tiny_video_models.py --family qwen2_5_vl --ckpt runs/.../last.ckpt   # export a finished fit

`--ckpt` skips training and exports the weights of a `lightning-prune fit` of that same config (its last epoch).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from lightning_prune.cli import LightningPruneCLI
from lightning_prune.modules.video_training import ASSETS, write_trained

CONFIGS = Path("configs/video")


def trained_families() -> list[str]:
    return sorted(path.stem.removeprefix("train_tiny_") for path in CONFIGS.glob("train_tiny_*.yaml"))


def evaluate(asset: Path, config: dict, root: str) -> dict[str, float]:
    """Test accuracy (overall, per kind) of the written half-precision file, with the config's data settings."""
    import lightning as L

    from lightning_prune.data.synthetic_video_qa import SyntheticVideoQADataModule
    from lightning_prune.modules.video_llm import VideoLLM

    data = SyntheticVideoQADataModule(**{**config["data"]["init_args"], "root": root})
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return trainer.test(VideoLLM(checkpoint=str(asset)), data, verbose=False)[0]


def _fit(config_path: Path, family: str, root: str, runs: str) -> tuple[torch.nn.Module, float | None]:
    cli = LightningPruneCLI(args=["fit", "--config", str(config_path), f"--data.init_args.root={root}",
                                 f"--trainer.default_root_dir={runs}/{family}",
                                 "--trainer.logger=lightning.pytorch.loggers.CSVLogger",  # curves: <runs>/<family>/
                                 f"--trainer.logger.init_args.save_dir={runs}/{family}",
                                 "--trainer.enable_checkpointing=false"])
    return cli.model.model, float(cli.trainer.callback_metrics.get("val/acc", float("nan")))


def _from_checkpoint(ckpt: Path) -> tuple[torch.nn.Module, float | None]:
    from lightning_prune.modules.video_llm import VideoLLM

    # the fit's own hyperparameters rebuild the module (its training-only heads included); the asset keeps the model
    return VideoLLM.load_from_checkpoint(ckpt, map_location="cpu").model, None


def build(family: str, root: str, runs: str, out: Path, ckpt: Path | None = None) -> Path:
    config_path = CONFIGS / f"train_tiny_{family}.yaml"
    config = yaml.safe_load(config_path.read_text())
    init = config["model"]["init_args"]
    started = time.perf_counter()
    model, val_acc = _fit(config_path, family, root, runs) if ckpt is None else _from_checkpoint(ckpt)
    seconds = time.perf_counter() - started
    extra = {"trained_with": str(config_path), "train_seconds": round(seconds, 1) if ckpt is None else None,
             "num_frames": config["data"]["init_args"]["num_frames"],
             "frame_size": config["data"]["init_args"]["frame_size"],
             "augmentation": init.get("augmentation"), "patch_position_loss": init.get("patch_position_loss", 0.0),
             "final_val_acc": val_acc}
    asset = write_trained(out / f"{family}.safetensors", model, family, init["tiny_config"],
                          init.get("answer_prefix", ""), extra)
    print(f"{family}: trained in {seconds:.0f} s, wrote {asset} ({asset.stat().st_size / 1e6:.2f} MB)")  # noqa: T201
    results = evaluate(asset, config, root)
    print(json.dumps({family: {key: round(value, 4) for key, value in results.items()}}, indent=1))  # noqa: T201
    return asset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", action="append", choices=trained_families(),
                        help="family to train (repeatable; default: all with a configs/video/train_tiny_*.yaml)")
    parser.add_argument("--root", default="data", help="data folder of the synthetic splits (default: data)")
    parser.add_argument("--runs", default="runs/build_tiny_video_models", help="the fits' folder")
    parser.add_argument("--out", type=Path, default=ASSETS, help=f"where the assets go (default: {ASSETS})")
    parser.add_argument("--ckpt", type=Path, default=None, help="export this fit's checkpoint instead of training")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for family in args.family or trained_families():
        build(family, args.root, args.runs, args.out, args.ckpt)


if __name__ == "__main__":
    main()
