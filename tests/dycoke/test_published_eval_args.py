"""The published-evaluation options through the configs, the lmms-eval `--model_args` and the callback: defaults,
overrides, and each mistake refused with one message before any model loads."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from lightning_prune.callbacks import DyCoke
from lightning_prune.data.video_qa import VideoQADataModule
from lightning_prune.evaluation.model_args import parse_model_args
from lightning_prune.modules.video_llm import VideoLLM

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "dycoke"
SEVEN_B, QWEN = str(CONFIGS / "llava_ov_7b.yaml"), str(CONFIGS / "qwen2_5_vl_7b.yaml")


@pytest.mark.parametrize("name", ["llava_ov_7b.yaml", "llava_ov_0.5b.yaml"])
def test_configs_claiming_the_published_settings_run_float16_with_the_published_prompt(name):
    model = yaml.safe_load((CONFIGS / name).read_text())["model"]["init_args"]
    assert (model["dtype"], model["prompt"], model["family"]) == ("float16", "published", "llava_onevision")


def test_model_args_take_the_prompt_from_the_config_and_override_it():
    assert parse_model_args({"config": SEVEN_B}).model_init_args["prompt"] == "published"
    assert parse_model_args({"config": SEVEN_B, "prompt": "chat_template"}).model_init_args["prompt"] == "chat_template"
    carried = parse_model_args({"config": SEVEN_B, "carry_state_across_samples": True, "score_dtype": "model"})
    assert carried.dycoke["carry_state_across_samples"] is True and carried.dycoke["score_dtype"] == "model"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"config": QWEN, "prompt": "published"},
         r"`prompt` 'published' exists only for families with published DyCoke code \['llava_onevision'\], "
         r"got family 'qwen2_5_vl'"),
        ({"config": SEVEN_B, "prompt": "vicuna_v1"}, r"`prompt` must be one of \['chat_template', 'published'\]"),
        ({"config": SEVEN_B, "carry_state_across_samples": True, "batch_size": 2},
         r"`carry_state_across_samples` needs `batch_size` 1 .*got 2"),
        ({"config": SEVEN_B, "score_dtype": "bfloat16"}, r"`score_dtype` must be one of \['model', 'float32'\]"),
    ],
)
def test_model_args_refuse_published_options_that_cannot_hold(args, match):
    with pytest.raises(ValueError, match=match):
        parse_model_args(args)


def test_callback_refuses_carried_state_with_batches_of_more_than_one_at_setup():
    data = VideoQADataModule(generate_synthetic=True, batch_size=2)
    with pytest.raises(ValueError, match=r"`carry_state_across_samples` needs batches of 1 sample .*batch_size 2"):
        DyCoke(carry_state_across_samples=True).setup(SimpleNamespace(datamodule=data), None, "predict")


def test_callback_carries_the_last_attention_vector_from_one_run_to_the_next():
    module = VideoLLM(tiny_config=True, max_new_tokens=3)
    callback = DyCoke(merging_ratio=0.5, prune_layer=2, carry_state_across_samples=True)
    trainer = SimpleNamespace(datamodule=None)
    video = torch.randint(0, 256, (8, 28, 28, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch = {"videos": [video], "question": ["What moves?"], "options": [["left", "right"]], "id": ["a"]}
    carried = []
    for _ in range(2):  # two predict runs: setup builds new hooks each time
        callback.setup(trainer, module, "predict")
        callback._install(module)
        try:
            if carried:
                assert callback._hooks.pruning.carried_attention is carried[-1]  # handed over before any step
            module.predict_step(batch, 0)
        finally:
            callback._remove()
        carried.append(callback._hooks.pruning.carried_attention)
    assert carried[0] is not None and carried[1] is not carried[0]

