"""`--model_args` of the lmms-eval model: resolved against our configs, every mistake one message before any model."""

import pytest
from lmms_helpers import REPO

from lightning_prune.evaluation.model_args import CONTEXT_TEMPLATE, parse_model_args, valid_keys
from lightning_prune.modules.video_llm import VideoLLM

TINY = str(REPO / "configs" / "dycoke" / "tiny.yaml")
SEVEN_B = str(REPO / "configs" / "dycoke" / "llava_ov_7b.yaml")


def test_model_args_take_the_model_frames_and_dycoke_from_the_config():
    settings = parse_model_args({"config": SEVEN_B})
    assert issubclass(settings.model_class, VideoLLM)
    assert settings.model_init_args["model_name_or_path"] == "llava-hf/llava-onevision-qwen2-7b-ov-hf"
    assert settings.model_init_args["prompt_template"] == CONTEXT_TEMPLATE  # lmms-eval's context is the prompt
    assert settings.num_frames == 32 and settings.frame_sampling == "truncate" and settings.batch_size == 1
    assert settings.num_workers == 4  # the config's data loader workers decode videos
    # the config lists the DyCoke callback: on, with its settings
    assert settings.dycoke == {"merging_ratio": 0.7, "prune_layer": 3, "decode_prune_ratio": 0.8, "window": 4,
                               "reuse_threshold": 0.9, "variant": "official"}  # the published evaluation settings
    assert parse_model_args({"config": SEVEN_B, "dycoke": False}).dycoke is None


def test_model_args_override_dycoke_with_the_papers_letters_or_the_callbacks_names():
    settings = parse_model_args({"config": SEVEN_B, "K": 0.5, "L": 2, "P": 0.6, "window": 2, "variant": "refined",
                                 "positions": "original"})
    assert settings.dycoke == {"merging_ratio": 0.5, "prune_layer": 2, "decode_prune_ratio": 0.6, "window": 2,
                               "reuse_threshold": 0.9, "variant": "refined", "positions": "original"}
    assert settings.build_dycoke().settings.positions == "original"
    tiny = parse_model_args({"config": TINY, "dycoke": True, "num_frames": 8, "batch_size": "2", "device": "cpu",
                             "report": "out"})
    assert tiny.dycoke == {}  # not in the config: the callback's own defaults
    assert tiny.num_workers == 0
    assert (tiny.num_frames, tiny.batch_size, str(tiny.report)) == (8, 2, "out/lightning_prune_efficiency.json")
    assert tiny.trainer_device() == {"accelerator": "cpu", "devices": 1}
    with pytest.MonkeyPatch.context() as patch:  # as on a machine with two GPUs
        patch.setattr("torch.cuda.device_count", lambda: 2)
        assert parse_model_args({"config": TINY, "device": "cuda:1"}).trainer_device() == {"accelerator": "gpu",
                                                                                           "devices": [1]}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("torch.cuda.device_count", lambda: 0)
        with pytest.raises(ValueError, match=r"`device` 'cuda' needs a visible CUDA GPU \(number 0\), got 0 here\."):
            parse_model_args({"config": TINY, "device": "cuda"})
    assert parse_model_args({"config": TINY}).dycoke is None  # tiny.yaml lists no DyCoke: off unless asked


def test_model_args_reject_an_unknown_key_listing_the_valid_ones():
    with pytest.raises(ValueError, match=r"`model_args` keys of `lightning_prune` must be among \[.*'config', 'dycoke'"
                                         r".*'K', 'L', 'P', 'merging_ratio'.*\], got unknown colour, pretrained"):
        parse_model_args({"config": TINY, "colour": "red", "pretrained": "x"})
    assert {"config", "dycoke", "num_frames", "K", "L", "P", "batch_size", "device"} <= set(valid_keys())


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({}, r"`model_args` must include `config`"),
        ({"config": "nope.yaml"}, r"`config` must be a project YAML file, got 'nope.yaml' \(not found\)"),
        ({"config": str(REPO / "configs" / "quickstart.yaml")},
         r"`config` must hold a video model \(`model.class_path` a subclass of lightning_prune.modules.VideoLLM\), "
         r"got 'lightning_prune.modules.ImageClassifier'"),
        ({"config": TINY, "dycoke": "yes"}, r"`dycoke` must be true or false, got 'yes'"),
        ({"config": TINY, "K": 0.5}, r"DyCoke settings \['merging_ratio'\] were given with DyCoke off"),
        ({"config": TINY, "dycoke": True, "K": 1.5}, r"`merging_ratio` must be in \[0, 1\), got 1.5"),
        ({"config": TINY, "dycoke": True, "positions": "renumbered"},
         r"`positions` must be one of \['published', 'original'\], got 'renumbered'"),
        ({"config": TINY, "num_frames": 0}, r"`num_frames` must be an integer >= 1, got 0"),
        ({"config": TINY, "batch_size": "auto"}, r"`batch_size` must be an integer >= 1, got 'auto'"),
        ({"config": TINY, "num_workers": -1}, r"`num_workers` must be an integer >= 0, got -1"),
        ({"config": TINY, "frame_sampling": "floor"}, r"`frame_sampling` must be one of \['truncate', 'round'\]"),
        ({"config": TINY, "device": "tpu"}, r"`device` must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
    ],
)
def test_model_args_reject_bad_values_before_building_anything(args, match):
    with pytest.raises(ValueError, match=match):
        parse_model_args(args)


@pytest.mark.parametrize(
    ("text", "match"),
    [("model: [unclosed", r"`config` .*bad\.yaml is not valid YAML"),
     ("- just\n- a list\n", r"`config` .*bad\.yaml must be a YAML mapping with a `model` section, got list")],
)
def test_model_args_name_a_config_that_is_no_yaml_mapping(tmp_path, text, match):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(ValueError, match=match):
        parse_model_args({"config": str(config)})


def test_model_args_refuse_a_config_class_that_is_no_video_model_without_calling_it(tmp_path):
    config = tmp_path / "evil.yaml"
    config.write_text("model:\n  class_path: os.system\n  init_args: {command: 'touch pwned'}\n")
    with pytest.raises(ValueError, match=r"`config` must hold a video model .* got 'os.system'"):
        parse_model_args({"config": str(config)})
    assert not (tmp_path / "pwned").exists()
