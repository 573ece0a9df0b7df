"""lmms-eval end to end on the shipped trained tiny video LLMs: the tiny task's accuracy means something.

The task's questions are the synthetic test split (seed 3, never used in training); greedy answers "Answer: <letter>"
are parsed by the task's own `process_results`. DyCoke on means the published settings (K 0.7, L 3, P 0.8). The task
data here is the split's first 20 questions, four of every kind.
"""

import pytest
from _support.lmms_task import enter_task_folder, write_task_folder
from lmms_helpers import CONFIGS, TASK

from lightning_prune.evaluation.lmms_model import LightningPruneVideoLLM, evaluate_video_tasks

TRAINED_CONFIGS = sorted(CONFIGS.glob("trained_*.yaml"))
QUESTIONS = 20
# DyCoke off; a broken merge, position or cache falls towards chance (a quarter). LLaVA-NeXT-Video's counting is weak.
FLOOR = {"trained_llava_onevision": 0.9, "trained_llava_next_video": 0.8, "trained_qwen2_5_vl": 0.9,
         "trained_qwen3_vl": 0.85}
# DyCoke on: LLaVA-OV and the Qwen-VL families keep (nearly) all their answers; LLaVA-NeXT-Video loses motion (the
# published code renumbers its 1-D positions after merging; see tests/dycoke/test_trained_models.py).
FLOOR_DYCOKE = {"trained_llava_onevision": 0.9, "trained_llava_next_video": 0.5, "trained_qwen2_5_vl": 0.9,
                "trained_qwen3_vl": 0.8}


@pytest.fixture(scope="module")
def answered_task_folder(tmp_path_factory):
    return write_task_folder(tmp_path_factory, "lmms_trained", samples=QUESTIONS)


@pytest.fixture
def in_answered_folder(answered_task_folder, monkeypatch):
    return enter_task_folder(answered_task_folder, monkeypatch)


@pytest.mark.slow  # an lmms-eval harness run (simple_evaluate)
@pytest.mark.parametrize("dycoke", [False, True], ids=["dycoke_off", "dycoke_on"])
@pytest.mark.parametrize("config", TRAINED_CONFIGS, ids=lambda path: path.stem)
def test_trained_model_answers_the_tiny_task(config, dycoke, in_answered_folder):
    lm = LightningPruneVideoLLM(config=str(config), dycoke=dycoke, device="cpu", batch_size=5)
    results = evaluate_video_tasks(lm, [TASK], limit=QUESTIONS, include_default_tasks=False)
    responses = [sample["resps"] for sample in results["samples"][TASK]]
    assert len(responses) == QUESTIONS
    assert results["results"][TASK]["accuracy,none"] >= (FLOOR_DYCOKE if dycoke else FLOOR)[config.stem], responses
    kept = [row["visual_tokens_after"] / row["visual_tokens_before"] for row in lm.efficiency_rows]
    assert (max(kept) < 0.6) if dycoke else (min(kept) == 1.0)


@pytest.mark.slow  # an lmms-eval harness run (simple_evaluate)
def test_trained_llava_keeps_its_answers_with_original_positions_through_lmms_eval(in_answered_folder):
    """`positions=original` in `--model_args` reaches the settings (LLaVA-OV: 19 of 20 in process at the published
    K, L, P)."""
    config = next(path for path in TRAINED_CONFIGS if path.stem == "trained_llava_onevision")
    lm = LightningPruneVideoLLM(config=str(config), dycoke=True, positions="original", device="cpu", batch_size=5)
    results = evaluate_video_tasks(lm, [TASK], limit=QUESTIONS, include_default_tasks=False)
    assert results["results"][TASK]["accuracy,none"] >= 0.9
    assert lm.settings.dycoke["positions"] == "original"
