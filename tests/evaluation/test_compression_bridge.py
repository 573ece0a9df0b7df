"""`method=<name>` in lmms-eval's `--model_args`: any registered compression method with its own parameters, checked
before any model is built, end to end on the tiny task, and named with its settings in the efficiency report."""

import json

import pytest
from lmms_helpers import REPO, TASK, TINY

from lightning_prune.evaluation.lmms_model import LightningPruneVideoLLM, evaluate_video_tasks
from lightning_prune.evaluation.model_args import parse_model_args, valid_keys

SEVEN_B = str(REPO / "configs" / "dycoke" / "llava_ov_7b.yaml")


def test_method_takes_its_own_parameters_and_replaces_the_configs_dycoke():
    settings = parse_model_args({"config": SEVEN_B, "method": "fastv", "K": 2, "ratio": 0.25})
    assert settings.dycoke is None  # the config lists DyCoke: the method replaces it
    assert (settings.method, settings.method_settings) == ("fastv", {"K": 2, "ratio": 0.25})
    assert settings.compression == {"method": "fastv", "settings": {"K": 2, "ratio": 0.25}}
    callback = settings.build_compression()
    assert callback.method.describe() == "fastv(K=2, ratio=0.25)"
    floor = parse_model_args({"config": str(TINY), "method": "uniform_temporal"})
    assert floor.compression == {"method": "uniform_temporal",
                                 "settings": {"keep_ratio": 0.25, "positions": "published"}}
    kept = parse_model_args({"config": str(TINY), "method": "visionzip", "positions": "original"})
    assert kept.build_compression().method.positions == "original"
    dycoke = parse_model_args({"config": str(TINY), "method": "dycoke", "K": 0.5})
    assert dycoke.method is None and dycoke.dycoke == {"merging_ratio": 0.5}
    assert {"K", "ratio", "config", "method"} <= set(valid_keys("fastv"))


def test_method_dycoke_takes_the_published_evaluation_settings_as_the_dycoke_callback():
    from lightning_prune.compression import get_method

    args = {"config": str(TINY), "method": "dycoke", "K": 0.5, "score_dtype": "model",
            "carry_state_across_samples": True}
    settings = parse_model_args(args)
    assert settings.dycoke == {"merging_ratio": 0.5, "score_dtype": "model", "carry_state_across_samples": True}
    callback = settings.build_compression()
    assert (callback.settings.score_dtype, callback.settings.carry_state_across_samples) == ("model", True)
    # The method class takes the report's settings back and forwards them to the same DyCoke settings.
    assert get_method("dycoke", **settings.compression["settings"]).dycoke_settings() == callback.settings
    with pytest.raises(ValueError, match=r"`carry_state_across_samples` needs `batch_size` 1 .*got 2"):
        parse_model_args({**args, "batch_size": 2})


@pytest.mark.parametrize(("args", "match"), [
    ({"method": "tome"}, r"`method` must be one of \['dycoke', 'fastv', 'random', 'uniform_spatial', "
                         r"'uniform_temporal'.*\], got 'tome'"),
    ({"method": "fastv", "ratio": 0.0}, r"`ratio` must be in \(0, 1\], got 0\.0"),
    ({"method": "fastv", "keep_ratio": 0.5}, r"`model_args` keys of `lightning_prune` must be among \[.*'K', 'ratio'"
                                             r"\], got unknown keep_ratio"),
    ({"method": "fastv", "dycoke": True}, r"One token-compression method per run: got `method=fastv` and `dycoke`"),
    ({"method": "dycoke", "dycoke": False}, r"`method=dycoke` turns DyCoke on; drop `dycoke=false`"),
])
def test_method_args_are_refused_before_any_model(args, match):
    with pytest.raises(ValueError, match=match):
        parse_model_args({"config": str(TINY), **args})


@pytest.mark.slow  # an lmms-eval harness run (simple_evaluate)
def test_fastv_runs_the_tiny_task_and_the_report_names_it(in_task_folder):
    lm = LightningPruneVideoLLM(config=str(TINY), method="fastv", ratio=0.25, device="cpu", batch_size=2,
                                report="report_fastv")
    module = lm.module
    results = evaluate_video_tasks(lm, [TASK], limit=2, include_default_tasks=False)
    assert 0.0 <= results["results"][TASK]["accuracy,none"] <= 1.0
    assert module.model.config.get_text_config()._attn_implementation == "sdpa"
    report = json.loads((in_task_folder / "report_fastv" / "lightning_prune_efficiency.json").read_text())
    assert report["compression"] == {"method": "fastv", "settings": {"K": 3, "ratio": 0.25}}
    for row in report["samples"]:  # 16 frames of 16 tokens and the newline: layers >= K keep int(257 / 4)
        assert (row["visual_tokens_before"], row["visual_tokens_after"]) == (16 * 16 + 1, 64)
