"""`method=framefusion` and `method=prunevid` in lmms-eval's `--model_args`: the tiny task end to end (batch 1, as the
methods run), the report naming the method and its settings, and a batch refused with the method's message."""

import json

import pytest
from lmms_helpers import TASK, TINY

from lightning_prune.evaluation.lmms_model import LightningPruneVideoLLM, evaluate_video_tasks
from lightning_prune.evaluation.model_args import parse_model_args


@pytest.mark.parametrize(("method", "settings", "expected"), [
    ("framefusion", {"cost": 0.5}, {"cost": 0.5, "similarity_lower_bound": 0.6, "ratio_lower_bound": 0.1}),
    ("prunevid", {"selected_layer": 1}, {"tau": 0.8, "temporal_segment_ratio": 0.25, "cluster_ratio": 0.5,
                                         "alpha": 0.4, "selected_layer": 1, "k": 7, "seed": 0,
                                         "temporal_merging": True}),
])
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
