"""lmms-eval end to end on the shipped trained tiny video LLMs: the tiny task's accuracy means something.

The task's questions are the synthetic test split (seed 3, never used in training); greedy answers "Answer: <letter>"
are parsed by the task's own `process_results`. DyCoke on means the published settings (K 0.7, L 3, P 0.8).
"""

import pytest
from lmms_helpers import CONFIGS, TASK

from lightning_prune.evaluation.lmms_model import LightningPruneVideoLLM, evaluate_video_tasks

TRAINED_CONFIGS = sorted(CONFIGS.glob("trained_*.yaml"))
QUESTIONS = 10  # the task folder holds 10 questions: every kind twice
FLOOR = 0.9


@pytest.mark.parametrize("dycoke", [False, True], ids=["dycoke_off", "dycoke_on"])
@pytest.mark.parametrize("config", TRAINED_CONFIGS, ids=lambda path: path.stem)
def test_trained_model_answers_the_tiny_task(config, dycoke, in_task_folder):
    lm = LightningPruneVideoLLM(config=str(config), dycoke=dycoke, device="cpu", batch_size=5)
    results = evaluate_video_tasks(lm, [TASK], limit=QUESTIONS, include_default_tasks=False)
    responses = [sample["resps"] for sample in results["samples"][TASK]]
    assert results["results"][TASK]["accuracy,none"] >= FLOOR, responses
    kept = [row["visual_tokens_after"] / row["visual_tokens_before"] for row in lm.efficiency_rows]
    assert (max(kept) < 0.6) if dycoke else (min(kept) == 1.0)
