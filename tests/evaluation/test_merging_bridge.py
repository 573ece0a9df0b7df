"""`method=framefusion` and `method=prunevid` in lmms-eval's `--model_args`: the tiny task end to end (batch 1, as the
methods run), the report naming the method and its settings, and batches of 2 answered as batch-1 runs."""

import json

import pytest
from lmms_helpers import TASK, TINY

from lightning_prune.evaluation.lmms_model import LightningPruneVideoLLM, evaluate_video_tasks
from lightning_prune.evaluation.model_args import parse_model_args


@pytest.mark.parametrize(("method", "settings", "expected"), [
    ("framefusion", {"cost": 0.5}, {"cost": 0.5, "similarity_lower_bound": 0.6, "ratio_lower_bound": 0.1}),
    ("prunevid", {"selected_layer": 1}, {"tau": 0.8, "temporal_segment_ratio": 0.25, "cluster_ratio": 0.5,
                                         "alpha": 0.4, "selected_layer": 1, "k": 7, "seed": 0,
                                         "temporal_merging": True, "positions": "published"}),
])
@pytest.mark.slow  # an lmms-eval harness run (simple_evaluate)
def test_merging_methods_run_the_tiny_task_and_the_report_names_them(in_task_folder, method, settings, expected):
    lm = LightningPruneVideoLLM(config=str(TINY), method=method, device="cpu", batch_size=1,
                                report=f"report_{method}", **settings)
    results = evaluate_video_tasks(lm, [TASK], limit=2, include_default_tasks=False)
    assert 0.0 <= results["results"][TASK]["accuracy,none"] <= 1.0
    report = json.loads((in_task_folder / f"report_{method}" / "lightning_prune_efficiency.json").read_text())
    assert report["compression"] == {"method": method, "settings": expected}
    for row in report["samples"]:  # 16 frames of 16 tokens and the newline
        assert row["visual_tokens_before"] == 16 * 16 + 1 > row["visual_tokens_after"]


def test_merging_methods_check_their_values_before_any_model():
    with pytest.raises(ValueError, match=r"`cost` must be in \(0, 1\], got 0"):
        parse_model_args({"config": str(TINY), "method": "framefusion", "cost": 0})
    with pytest.raises(ValueError, match=r"`tau` must be in \[-1, 1\], got 2"):
        parse_model_args({"config": str(TINY), "method": "prunevid", "tau": 2})


@pytest.mark.slow  # an lmms-eval harness run (simple_evaluate)
@pytest.mark.parametrize("method", ["framefusion", "prunevid"])
def test_merging_methods_answer_a_batch_of_two_as_two_batch_1_runs(in_task_folder, method):
    """lmms-eval batches of 2 (left-padded prompts) run sample by sample: the same answers as batch 1, PruneVid on
    its default layer (the published relative depth) on the 4-layer model."""
    answers = {}
    for size in (1, 2):
        lm = LightningPruneVideoLLM(config=str(TINY), method=method, device="cpu", batch_size=size)
        results = evaluate_video_tasks(lm, [TASK], limit=4, include_default_tasks=False)
        answers[size] = [(sample["doc_id"], sample["resps"]) for sample in results["samples"][TASK]]
        assert all(row["visual_tokens_after"] < row["visual_tokens_before"] for row in lm.efficiency_rows)
    assert len(answers[1]) == 4 and answers[2] == answers[1]
