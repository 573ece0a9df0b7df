"""The shipped trained tiny video LLMs answer the synthetic questions, with DyCoke off and at its published settings.

Fixed questions of the test split (seed 3, never used in training), greedy answers: the first 20, four of every kind
(appearance, motion, order, flash, counting). A change that breaks merging, positions or the KV cache selection
changes these answers and fails here.
"""

import csv
import re
from pathlib import Path

import pytest
import torch
from _support.synthetic_batches import synthetic_batch

from lightning_prune.cli import main
from lightning_prune.data.synthetic_video import KINDS
from lightning_prune.dycoke.hooks import DyCokeHooks, DyCokeSettings
from lightning_prune.modules.video_llm import VideoLLM
from lightning_prune.modules.video_training import ASSETS

FAMILIES = sorted(path.stem for path in ASSETS.glob("*.safetensors"))
# the first four questions of every kind in the test split (kinds cycle: sample i has kind KINDS[i % 5])
SAMPLES = list(range(4 * len(KINDS)))
# Shares of correct greedy answers required, per family, each set from what the family answers on these 20 (chance is
# a quarter). Without DyCoke (measured: LLaVA-OV 20, Qwen2.5-VL 19, Qwen3-VL 20 of 20; LLaVA-NeXT-Video 17: its
# counting is weak).
FLOOR = {"llava_onevision": 0.95, "llava_next_video": 0.8, "qwen2_5_vl": 0.9, "qwen3_vl": 0.95}
PUBLISHED = DyCokeSettings(merging_ratio=0.7, prune_layer=3, decode_prune_ratio=0.8, variant="official")
# With DyCoke at the published settings: Qwen2.5-VL 20, LLaVA-OV 19, Qwen3-VL 17, LLaVA-NeXT-Video 12 of 20 (a floor
# one question under what a family answers, so that a change of float rounding alone does not fail it).
# LLaVA-NeXT-Video loses motion: the published code renumbers the merged prompt's 1-D positions and it reads where
# the square is from them; LLaVA-OV, trained with shuffled frame positions and `patch_position_loss`, reads it from
# its tokens (see the README's trade-off).
FLOOR_PUBLISHED = {"llava_onevision": 0.9, "llava_next_video": 0.5, "qwen2_5_vl": 0.9, "qwen3_vl": 0.8}
DECODE_ONLY = DyCokeSettings(merging_ratio=0.0, prune_layer=3, decode_prune_ratio=0.8, variant="official")
FLOOR_DECODE_ONLY = 0.8  # measured: LLaVA-OV 20, LLaVA-NeXT-Video 16, Qwen2.5-VL 19, Qwen3-VL 18 of 20


def _batch() -> dict:
    return synthetic_batch(3, SAMPLES, frames=16, size=32)


@pytest.fixture(scope="module", params=FAMILIES)
def trained(request):
    return VideoLLM(checkpoint=request.param, max_new_tokens=4).eval(), _batch(), request.param


def _greedy_letters(module: VideoLLM, batch: dict) -> list[str]:
    with torch.inference_mode():
        answers = module.predict_step(batch, 0)
    letters = [re.findall(r"\b([A-D])\b", answer["answer"]) for answer in answers]
    return [found[0] if found else "" for found in letters]


def _accuracy(letters: list[str], batch: dict) -> float:
    return sum(letter == "ABCD"[index] for letter, index in zip(letters, batch["answer_index"], strict=True)) / len(
        letters)


def test_shipped_assets_exist_for_both_rope_kinds():
    assert {"llava_onevision", "qwen2_5_vl"} <= set(FAMILIES)
    assert all(path.stat().st_size <= 6 * 2**20 for path in ASSETS.glob("*.safetensors"))


def test_trained_model_answers_without_dycoke(trained):
    module, batch, family = trained
    letters = _greedy_letters(module, batch)
    assert _accuracy(letters, batch) >= FLOOR[family], letters
    with torch.inference_mode():  # the scored letter after the greedy prefix agrees with the free answer
        assert ["ABCD"[i] for i in module.answer_indices(batch).tolist()] == letters


def test_trained_model_answers_with_dycoke_at_the_published_settings(trained):
    module, batch, family = trained
    with DyCokeHooks(module.model, PUBLISHED) as hooks:
        letters = _greedy_letters(module, batch)
        stats = hooks.pop_stats()
    assert _accuracy(letters, batch) >= FLOOR_PUBLISHED[family], letters
    (generation,) = stats
    assert generation.visual_tokens_after < 0.6 * generation.visual_tokens_before  # merging did act
    assert min(generation.attended_kv_lengths) < generation.full_kv_lengths[0]  # so did decode pruning


def test_trained_model_answers_with_decode_pruning_alone(trained):
    module, batch, _ = trained
    with DyCokeHooks(module.model, DECODE_ONLY) as hooks:
        letters = _greedy_letters(module, batch)
        (generation,) = hooks.pop_stats()
    assert _accuracy(letters, batch) >= FLOOR_DECODE_ONLY, letters
    assert generation.visual_tokens_after == generation.visual_tokens_before  # no merging
    assert min(generation.attended_kv_lengths) < generation.full_kv_lengths[0]  # the pruned cache answered


# With `positions: original` the merged tokens keep their whole-prompt positions (measured on these 20: LLaVA-OV 19,
# LLaVA-NeXT-Video 13, Qwen2.5-VL 20, Qwen3-VL 17).
ORIGINAL = DyCokeSettings(merging_ratio=0.7, prune_layer=3, decode_prune_ratio=0.8, variant="official",
                          positions="original")
FLOOR_ORIGINAL = {"llava_onevision": 0.9, "llava_next_video": 0.6, "qwen2_5_vl": 0.9, "qwen3_vl": 0.8}


def _prompt_scores(module: VideoLLM, batch: dict, settings: DyCokeSettings) -> torch.Tensor:
    """`[B, V]` next-token logits after the prompt, merged under `settings`."""
    with DyCokeHooks(module.model, settings), torch.inference_mode():
        return module.model(**module.model_inputs(batch), use_cache=False).logits[:, -1]


def test_trained_model_answers_with_dycoke_keeping_original_positions(trained):
    module, batch, family = trained
    with DyCokeHooks(module.model, ORIGINAL):
        letters = _greedy_letters(module, batch)
    assert _accuracy(letters, batch) >= FLOOR_ORIGINAL[family], letters
    original, published = (_prompt_scores(module, batch, settings) for settings in (ORIGINAL, PUBLISHED))
    if family.startswith("llava"):  # 1-D RoPE: the rule changes the positions the merged prompt runs with
        assert not torch.allclose(original, published, atol=1e-3)
    else:  # the Qwen-VL families' (t, h, w) ids stay original under both rules
        torch.testing.assert_close(original, published)


@pytest.mark.parametrize("family", FAMILIES)
def test_trained_config_tests_through_the_cli_with_the_dycoke_callback(tmp_path, monkeypatch, family):
    """`lightning-prune test --config configs/dycoke/trained_<family>.yaml` with DyCoke added, a logger on."""
    config = Path(__file__).resolve().parents[2] / "configs" / "dycoke" / f"trained_{family}.yaml"
    monkeypatch.chdir(tmp_path)
    main(["test", "--config", str(config), "--trainer.callbacks+=lightning_prune.callbacks.DyCoke",
          "--trainer.callbacks.positions=original", f"--data.init_args.root={tmp_path / 'data'}",
          "--data.init_args.test_samples=10", "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
          f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}"])
    (path,) = list((tmp_path / "logs").rglob("metrics.csv"))
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    accuracy = [float(row["test/acc"]) for row in rows if row.get("test/acc")]
    assert len(accuracy) == 1 and accuracy[0] >= 0.5  # 10 questions, 2 per kind (chance: a quarter)
    merged = [row for row in rows if row.get("dycoke/visual_tokens_after")]
    assert merged and all(float(row["dycoke/visual_tokens_after"]) < float(row["dycoke/visual_tokens_before"])
                          for row in merged)
    (hparams,) = list((tmp_path / "logs").rglob("hparams.yaml"))
    assert f"family: {family}" in hparams.read_text()  # the checkpoint's family, merged with the data module's
