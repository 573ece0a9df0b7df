import dataclasses
import re
from pathlib import Path

import pytest
import torch

from lightning_prune.study.runner import build_parser, parse_config
from lightning_prune.study.spec import (
    MaskConfig,
    RecipeConfig,
    StudyConfig,
    config_differences,
    defining_config,
    fingerprint,
    parse_shard,
    resolve_class,
)
from lightning_prune.study.validation import check_class_spec, validate

CONFIGS = sorted((Path(__file__).parents[2] / "configs" / "study").glob("*.yaml"))
_SGD = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}


def _config(**overrides) -> StudyConfig:
    return StudyConfig(**{"pretrain": RecipeConfig(), **overrides})


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_study_config_parses_and_validates(path):
    config = parse_config(["--config", str(path)])
    validate(config)
    assert config.name == path.stem
    assert Path(config.study_dir) == Path("studies") / path.stem


def test_paper_settings_are_all_shipped():
    names = {p.stem for p in CONFIGS}
    lenet_single = {f"lenet5_mnist_conv{c}_{r}" for c in (1, 2, 3) for r in range(20, 90, 10)}
    combos = {f"lenet5_mnist_conv{c}_50" for c in ("12", "13", "23", "123")}
    variants = {f"lenet5w{w}_mnist_conv1_50" for w in (20, 30, 40)} | {f"lenet5d{d}_mnist_conv1_50" for d in (6, 7, 8)}
    others = {
        "lenet5_fmnist_conv1_50",
        "lenet5_kmnist_conv1_50",
        "resnet56_cifar10_blockconv1_50",
        "vgg19_cifar100_allconv_50",
        "resnet18_imagenet_blockconv1_50",
        "vit_b16_imagenet_heads_mlp_50",
        "quickstart",
        # language models and MLLMs (tests/llm)
        "tiny_llama_mlp",
        "tiny_llama_heads",
        "tiny_llava_mlp",
        "tinyllava_mlp_50",
        "tinyllava_kvgroups_50",
    }
    assert lenet_single | combos | variants | others == names


def test_cli_flags_override_the_config_and_help_shows_field_docs(capsys):
    quickstart = str(Path(__file__).parents[2] / "configs" / "study" / "quickstart.yaml")
    config = parse_config(["--config", quickstart, "--shard", "1/4", "--workers", "3", "--masks.sample", "5"])
    assert (config.shard, config.workers, config.masks.sample, config.masks.layers) == ("1/4", 3, 5, {"conv1": 0.5})
    assert isinstance(config.masks, MaskConfig) and isinstance(config.retrain, RecipeConfig)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    assert "Retrainings per mask" in capsys.readouterr().out


def test_validate_collects_every_problem_naming_flags(tmp_path):
    config = _config(
        model="nope",
        data={"class_path": "no.such.Module"},
        checkpoint=tmp_path / "missing.ckpt",
        masks=MaskConfig(layers={"conv1": 1.5}, sample=0, criteria=["l1", "magic"], calibration_batches=0),
        retrain=RecipeConfig(epochs=0, optimizer={"class_path": "torch.optim.SGD", "extra": 1}, lr_scheduler=None),
        repeats=0,
        workers=0,
        batch_masks=0,
        gpus_per_trial=1.5,
        cpus_per_trial=0,
        shard="3/2",
        address="auto",
    )
    with pytest.raises(ValueError, match="Invalid study config") as error:
        validate(config)
    message = str(error.value)
    for expected in (
        "`--model` must be one of",
        "`--data.class_path` must name an importable class, got 'no.such.Module'",
        "`--pretrain`, `--checkpoint` or `--model_kwargs.weights` must give exactly one pretrained source",
        "`--checkpoint` must be an existing file",
        "`--retrain.epochs` must be at least 1, got 0",
        "`--retrain.optimizer` must hold only `class_path` and `init_args`, got extra keys ['extra']",
        "`--masks.sample` must be at least 1",
        "`--masks.criteria` must be among ['l1', 'taylor', 'oracle', 'random', 'bn_scale'], got ['magic']",
        "`--masks.calibration_batches` must be at least 1",
        "`--repeats` must be at least 1",
        "`--workers` must be at least 1",
        "`--batch_masks` must be at least 1",
        "`--gpus_per_trial` must be in (0, 1] or a whole number, got 1.5",
        "`--cpus_per_trial` must be positive",
        "`--shard` must be `i/n` with 0 <= i < n, got '3/2'",
        "`--address` must be null with --executor local, got 'auto'",
    ):
        assert expected in message


def test_validate_small_problems_raise():
    with pytest.raises(ValueError, match="`--masks.layers` must map at least one layer pattern"):
        validate(_config(masks=MaskConfig(layers={})))
    with pytest.raises(ValueError, match=r"exactly one pretrained source, got \['pretrain', 'model_kwargs"):
        validate(_config(model="resnet18", model_kwargs={"weights": "IMAGENET1K_V1"}))
    with pytest.raises(ValueError, match="`--batching on` needs a network without BatchNorm"):
        validate(_config(model="cifar_resnet20", batching="on"))
    with pytest.raises(ValueError, match="`--data` must be a mapping with `class_path`"):
        validate(_config(data={"init_args": {}}))
    with pytest.raises(ValueError, match="`--pretrain.lr_scheduler.init_args` must be a mapping"):
        validate(_config(pretrain=RecipeConfig(lr_scheduler={"class_path": "torch.optim.SGD", "init_args": 3})))
    validate(_config())  # the defaults are a valid study


def test_parse_shard_and_resolve_class():
    assert parse_shard(None) == (0, 1) and parse_shard("2/5") == (2, 5)
    with pytest.raises(ValueError, match="`--shard` must be `i/n`"):
        parse_shard("a/b")
    assert resolve_class("MNISTMiniDataModule").__name__ == "MNISTMiniDataModule"
    assert resolve_class("torch.optim.AdamW").__name__ == "AdamW"
    with pytest.raises(ValueError, match="`class_path` must name an importable class, got 'Nope'"):
        resolve_class("Nope")
    assert check_class_spec(_SGD, "x", "optimizer") == []


def test_fingerprint_covers_results_but_not_execution():
    base = _config()
    same = dataclasses.replace(base, executor="ray", workers=8, shard="0/2", wandb=False, batching="off",
                               study_dir=Path("elsewhere"), name="renamed")  # fmt: skip
    assert fingerprint(defining_config(base)) == fingerprint(defining_config(same))
    moved = dataclasses.replace(base, data={**base.data, "init_args": {"root": "/cluster/data", "num_workers": 8}})
    assert fingerprint(defining_config(base)) == fingerprint(defining_config(moved))
    changed = dataclasses.replace(base, retrain=RecipeConfig(epochs=5))
    assert fingerprint(defining_config(base)) != fingerprint(defining_config(changed))
    short = dataclasses.replace(base, data={"class_path": "MNISTMiniDataModule", "init_args": {}})
    assert fingerprint(defining_config(base)) == fingerprint(defining_config(short))
    differences = config_differences(defining_config(base), defining_config(changed))
    assert differences == ["retrain.epochs (stored 30, given 5)"]


def test_validate_mask_plan_problems_are_found_before_any_compute():
    """Findings that once surfaced only after pretraining: every one is now a config-only check."""
    cases = {
        "`--masks.layers` ratio 0.05 prunes 0 of the 10 filters of 'conv1' (floor(ratio x filters))": {"conv1": 0.05},
        "`--masks.layers['conv1']` must be a ratio in [0, 1), got 1.5": {"conv1": 1.5},
        "`--masks.layers` pattern 'conv9' must match a prunable layer": {"conv9": 0.5},
    }
    for message, layers in cases.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            validate(_config(masks=MaskConfig(layers=layers)))
    with pytest.raises(ValueError, match=r"`--masks.sample` must be at most the number of distinct masks \(252 for"):
        validate(_config(masks=MaskConfig(layers={"conv1": 0.5}, sample=300)))
    with pytest.raises(ValueError, match=r"`--masks.sample` must be set when there are more than 1,000,000 masks"):
        validate(_config(masks=MaskConfig(layers={"conv1": 0.5, "conv2": 0.5, "conv3": 0.5})))
    with pytest.raises(ValueError, match=r"`--model_kwargs` must be accepted by 'lenet5_mini'"):
        validate(_config(model_kwargs={"widht": 3}))


@pytest.mark.parametrize(
    ("slot", "spec", "message"),
    [
        ("data", {"class_path": "os.system", "init_args": {"command": "touch pwned"}},
         "`--data.class_path` must name a subclass of LightningDataModule, got 'os.system'"),
        ("optimizer", {"class_path": "builtins.eval", "init_args": {}},
         "`--retrain.optimizer.class_path` must name a subclass of Optimizer, got 'builtins.eval'"),
        ("lr_scheduler", {"class_path": "subprocess.Popen", "init_args": {"args": ["true"]}},
         "`--retrain.lr_scheduler.class_path` must name a subclass of LRScheduler, got 'subprocess.Popen'"),
        ("optimizer", {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1, "momentun": 0.9}},
         "`--retrain.optimizer.init_args` must be among ['lr', 'momentum', "),
        ("optimizer", {"class_path": "torch.optim.SGD", "init_args": {"lr": -1.0}},
         "`--retrain.optimizer.init_args` must be accepted by SGD, got {'lr': -1.0}: Invalid learning rate"),
        ("data", {"class_path": "MNISTMiniDataModule", "init_args": {"batch_size": 0}},
         "`--data.init_args` must be accepted by MNISTMiniDataModule, got {'batch_size': 0}: `batch_size` must be"),
    ],
)  # fmt: skip
def test_validate_class_paths_name_only_subclasses_of_their_slot(slot, spec, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if slot == "data":
        config = _config(data=spec)
    else:
        config = _config(retrain=dataclasses.replace(RecipeConfig(), **{slot: spec}))
    with pytest.raises(ValueError, match=re.escape(message)):
        validate(config)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(ValueError, match="must name a subclass of Optimizer, got 'os.system'"):
        resolve_class("os.system", torch.optim.Optimizer)  # what building the fits goes through too


def test_validate_recipe_trainer_typo_is_named():
    recipe = RecipeConfig(trainer={"max_epoch": 3, "precision": "32"})
    message = r"`--retrain.trainer` must hold lightning.Trainer arguments, got unknown \['max_epoch'\]"
    with pytest.raises(ValueError, match=message):
        validate(_config(retrain=recipe))


def test_fingerprint_includes_prune_mode():
    physical, masked = _config(prune_mode="physical"), _config(prune_mode="mask")
    assert fingerprint(defining_config(physical)) != fingerprint(defining_config(masked))
    assert config_differences(defining_config(physical), defining_config(masked)) == [
        'prune_mode (stored "physical", given "mask")'
    ]


def test_cli_class_path_overrides_replace_or_update_a_slot():
    quickstart = str(Path(__file__).parents[2] / "configs" / "study" / "quickstart.yaml")
    config = parse_config([
        "--config", quickstart,
        "--retrain.optimizer", "{class_path: torch.optim.SGD, init_args: {lr: 0.02}}",
        "--data={class_path: lightning_prune.data.MNISTMiniDataModule, init_args: {batch_size: 64}}",
        "--pretrain.optimizer.init_args.lr", "0.5",
        "--retrain.lr_scheduler.class_path=torch.optim.lr_scheduler.StepLR",
        "--retrain.lr_scheduler.init_args.step_size=2",
        "--masks.sample", "5",
    ])  # fmt: skip
    assert config.retrain.optimizer == {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.02}}
    assert config.data == {"class_path": "lightning_prune.data.MNISTMiniDataModule", "init_args": {"batch_size": 64}}
    assert config.pretrain.optimizer["init_args"] == {"lr": 0.5, "momentum": 0.9, "weight_decay": 0.0001}
    assert config.retrain.lr_scheduler == {"class_path": "torch.optim.lr_scheduler.StepLR",
                                           "init_args": {"step_size": 2}}  # fmt: skip
    assert config.masks.sample == 5
    validate(config)
    with pytest.raises(ValueError, match=r"`--data.init_args` must be `--data.class_path` or `--data.init_args.<"):
        parse_config(["--config", quickstart, "--data.init_args", "3"])
    with pytest.raises(ValueError, match=r"`--retrain.optimizer` must be followed by a value, got nothing"):
        parse_config(["--config", quickstart, "--retrain.optimizer"])
    with pytest.raises(ValueError, match=r"`--data` must be a mapping with `class_path` and `init_args`, got '3'"):
        parse_config(["--config", quickstart, "--data", "3"])
    with pytest.raises(ValueError, match=r"`--pretrain.optimizer` needs a `--pretrain` recipe, got `pretrain: null`"):
        parse_config(["--config", quickstart, "--pretrain", "null", "--pretrain.optimizer.init_args.lr", "1"])


def test_validate_gpu_accelerator_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"`--accelerator` must find a CUDA GPU for 'gpu', got none visible here"):
        validate(_config(accelerator="gpu"))
