"""The `--model_args` of lmms-eval's `lightning_prune` model: a project config, a token-compression method, overrides.

`config=configs/dycoke/<family>.yaml` names one of our own Lightning configs: its `model` (a `VideoLLM`) is built from
its `init_args`, its DyCoke callback (if listed under `trainer.callbacks`) gives the default DyCoke settings, and its
`data.init_args.num_frames` the default frame count. The other keys override those: `dycoke=true|false`, the DyCoke
callback's own argument names or the paper's letters (`K` merging ratio, `L` prune layer, `P` decode prune ratio),
`method=<name>` picks any registered token-compression method instead, with that method's own parameter names
(`lightning_prune.compression`: `method=fastv,K=2,ratio=0.5`, `method=uniform_temporal,keep_ratio=0.25`;
`method=dycoke` is `dycoke=true`), `num_frames`, `frame_sampling`, `num_workers` (video-decoding processes; default:
the config's data `num_workers`), `batch_size`, `device`, `report` (where the efficiency report JSON goes) and
`prompt` (`published` or `chat_template`: the `VideoLLM`'s prompt format; default: the config's). DyCoke's
`carry_state_across_samples` needs `batch_size=1`.
No lmms-eval import here: the checks run (and are tested) without the harness.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lightning_prune._checks import check_int
from lightning_prune.callbacks.dycoke import DyCoke
from lightning_prune.compression.registry import get_method, method_class
from lightning_prune.data.video_qa import FRAME_SAMPLERS
from lightning_prune.dycoke.families import FAMILY_NAMES, get_family
from lightning_prune.dycoke.families.base import published_prompt_refusal
from lightning_prune.modules.video_llm import PROMPTS, VideoLLM

# The published DyCoke letters, mapped onto the callback's argument names.
DYCOKE_ALIASES = {"K": "merging_ratio", "L": "prune_layer", "P": "decode_prune_ratio"}
BRIDGE_KEYS = ("config", "dycoke", "method", "num_frames", "frame_sampling", "batch_size", "max_batch_size", "device",
               "report", "num_workers", "prompt")
_NOT_SETTINGS = ("self", "log_prefix")  # DyCoke constructor arguments that are no DyCoke setting
# lmms-eval hands the prompt over whole (question, options and instruction): the module must not re-template it.
CONTEXT_TEMPLATE = "{question}"


def dycoke_setting_names() -> list[str]:
    """The DyCoke callback's constructor arguments that are settings (e.g. merging_ratio, ..., and variant if any)."""
    return [name for name in inspect.signature(DyCoke.__init__).parameters if name not in _NOT_SETTINGS]


def valid_keys(method: str | None = None) -> list[str]:
    """The accepted keys: the bridge's, then DyCoke's (no method or `method=dycoke`) or the method's parameters."""
    if method is None or method == "dycoke":
        return [*BRIDGE_KEYS, *DYCOKE_ALIASES, *dycoke_setting_names()]
    return [*BRIDGE_KEYS, *(field.name for field in dataclasses.fields(method_class(method)))]


@dataclass
class EvaluationSettings:
    """Everything the lmms-eval model needs, checked.

    Attributes:
        config: the project config the model comes from.
        model_class: a `VideoLLM` subclass.
        model_init_args: its constructor arguments (the prompt template replaced by `CONTEXT_TEMPLATE`).
        dycoke: the DyCoke callback's constructor arguments, or None when DyCoke is off.
        num_frames: frames given to the model per video.
        frame_sampling: a name in `lightning_prune.data.video_qa.FRAME_SAMPLERS`.
        batch_size: requests per `generate` call.
        num_workers: DataLoader processes decoding videos while the model generates.
        device: "auto", "cpu", "cuda" or "cuda:N".
        report: the efficiency report's JSON file, or None for no file.
        method: a token-compression method other than DyCoke (`lightning_prune.compression`), or None.
        method_settings: that method's parameters as given (its defaults fill the rest).
    """

    config: Path
    model_class: type[VideoLLM]
    model_init_args: dict[str, Any]
    dycoke: dict[str, Any] | None
    num_frames: int
    frame_sampling: str
    batch_size: int
    num_workers: int
    device: str
    report: Path | None
    method: str | None = None
    method_settings: dict[str, Any] | None = None

    @property
    def compression(self) -> dict[str, Any] | None:
        """The compression method's name and full settings (for reports), or None without one."""
        if self.dycoke is not None:
            return {"method": "dycoke", "settings": DyCoke(**self.dycoke).settings.__dict__}
        if self.method is not None:
            return {"method": self.method, "settings": get_method(self.method, **self.method_settings).settings()}
        return None

    def build_compression(self):
        """The compression callback (DyCoke or a `CompressionCallback`), or None."""
        if self.method is not None:
            from lightning_prune.callbacks.compression import CompressionCallback

            return CompressionCallback(get_method(self.method, **self.method_settings))
        return self.build_dycoke()

    def build_module(self) -> VideoLLM:
        return self.model_class(**self.model_init_args)

    def build_dycoke(self) -> DyCoke | None:
        return None if self.dycoke is None else DyCoke(**self.dycoke)

    def trainer_device(self) -> dict[str, Any]:
        """`accelerator` and `devices` for a Lightning Trainer."""
        if self.device == "auto":
            return {"accelerator": "auto", "devices": 1}
        if self.device == "cpu":
            return {"accelerator": "cpu", "devices": 1}
        index = self.device.partition(":")[2]
        return {"accelerator": "gpu", "devices": [int(index)] if index else 1}


def parse_model_args(model_args: dict[str, Any]) -> EvaluationSettings:
    """Check lmms-eval's parsed `--model_args` (plus its `batch_size` / `device`) and resolve them against the config.

    Raises:
        ValueError: an unknown key (the message lists the valid ones), a missing or unreadable config, a config
            without a video model, or a bad value; all before any model is built.
    """
    args = dict(model_args)
    method = args.pop("method", None)
    if method is not None:
        method_class(str(method))  # an unknown method: the message lists the registered ones
        if method == "dycoke":
            if args.get("dycoke", True) is not True:
                raise ValueError("`method=dycoke` turns DyCoke on; drop `dycoke=false`.")
            args["dycoke"], method = True, None
        elif "dycoke" in args:
            raise ValueError(f"One token-compression method per run: got `method={method}` and `dycoke`; drop one.")
    keys = valid_keys(method)
    unknown = sorted(set(args) - set(keys))
    if unknown:
        raise ValueError(
            f"`model_args` keys of `lightning_prune` must be among {keys}, got unknown {', '.join(unknown)}."
        )
    if "config" not in args:
        raise ValueError("`model_args` must include `config` (a project YAML such as configs/dycoke/tiny.yaml).")
    config = Path(str(args["config"]))
    raw = _read_config(config)
    model_class, init_args = _video_model(raw, config)
    method_settings = None
    if method is None:
        dycoke = _dycoke_settings(raw, config, args)
    else:  # the method replaces any DyCoke callback the config lists
        dycoke = None
        method_settings = {key: value for key, value in args.items() if key not in BRIDGE_KEYS}
        get_method(method, **method_settings)  # the method checks its own values now, before any model is built
    data_args = _mapping(_mapping(raw.get("data")).get("init_args"))
    num_frames = args.get("num_frames", data_args.get("num_frames", 32))
    check_int("num_frames", num_frames, 1)
    frame_sampling = args.get("frame_sampling", "truncate")
    if frame_sampling not in FRAME_SAMPLERS:
        raise ValueError(f"`frame_sampling` must be one of {list(FRAME_SAMPLERS)}, got {frame_sampling!r}.")
    batch_size = args.get("batch_size", 1)
    if isinstance(batch_size, str) and batch_size.isdigit():
        batch_size = int(batch_size)  # lmms-eval's command line passes it as text
    check_int("batch_size", batch_size, 1)
    num_workers = args.get("num_workers", data_args.get("num_workers", 0))
    check_int("num_workers", num_workers, 0)
    device = str(args.get("device", "auto"))
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ValueError(f"`device` must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}.")
    if device.startswith("cuda"):
        import torch

        index = int(device[5:]) if device.startswith("cuda:") else 0
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"`device` {device!r} needs a visible CUDA GPU (number {index}), got "
                f"{torch.cuda.device_count()} here. Use --device cpu (or auto), or run where one is visible."
            )
    report = args.get("report")
    if report is not None:
        report = Path(str(report))
        report = report / "lightning_prune_efficiency.json" if report.suffix != ".json" else report
    if "prompt_template" in inspect.signature(model_class.__init__).parameters:
        init_args["prompt_template"] = CONTEXT_TEMPLATE
    _apply_prompt(args, init_args)
    if dycoke is not None and dycoke.get("carry_state_across_samples") and batch_size != 1:
        raise ValueError("`carry_state_across_samples` needs `batch_size` 1 (the published runs, in dataset order), "
                         f"got {batch_size}.")
    return EvaluationSettings(config, model_class, init_args, dycoke, num_frames, frame_sampling, batch_size,
                              num_workers, device, report, method, method_settings)


def _apply_prompt(args: dict[str, Any], init_args: dict[str, Any]) -> None:
    """Check the prompt format (given here or in the config) against the model's family, before any model loads."""
    if "prompt" in args:
        init_args["prompt"] = args["prompt"]
    prompt = init_args.get("prompt", "chat_template")
    if prompt not in PROMPTS:
        raise ValueError(f"`prompt` must be one of {list(PROMPTS)}, got {prompt!r}.")
    # A family named in the config is checked here; one found from the checkpoint, by VideoLLM before weights load.
    family = init_args.get("family")
    if prompt == "published" and family in FAMILY_NAMES and get_family(family).published_conversation is None:
        raise ValueError(published_prompt_refusal(family))


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"`config` must be a project YAML file, got {str(path)!r} (not found).")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"`config` {path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"`config` {path} must be a YAML mapping with a `model` section, got {type(raw).__name__}.")
    return raw


def _import_class(class_path: str) -> Any:
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _section(entry: Any) -> tuple[str | None, dict[str, Any]]:
    """`(class_path, init_args)` of a YAML `class_path:` entry (or a bare class path string)."""
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and isinstance(entry.get("class_path"), str):
        return entry["class_path"], dict(entry.get("init_args") or {})
    return None, {}


def _video_model(raw: dict[str, Any], config: Path) -> tuple[type[VideoLLM], dict[str, Any]]:
    class_path, init_args = _section(raw.get("model"))
    model_class = _import_class(class_path) if class_path else None
    # Check the class before anything is called: a config may not make us run an arbitrary callable.
    if not (isinstance(model_class, type) and issubclass(model_class, VideoLLM)):
        raise ValueError(
            f"`config` must hold a video model (`model.class_path` a subclass of lightning_prune.modules.VideoLLM), "
            f"got {class_path!r} in {config}."
        )
    return model_class, init_args


def _dycoke_settings(raw: dict[str, Any], config: Path, args: dict[str, Any]) -> dict[str, Any] | None:
    callbacks = _mapping(raw.get("trainer")).get("callbacks") or []
    listed = None
    for entry in callbacks if isinstance(callbacks, list) else [callbacks]:
        class_path, init_args = _section(entry)
        found = _import_class(class_path) if class_path else None
        if isinstance(found, type) and issubclass(found, DyCoke):
            listed = init_args
    enabled = args.get("dycoke", listed is not None)
    if not isinstance(enabled, bool):
        raise ValueError(f"`dycoke` must be true or false, got {enabled!r}.")
    overrides = {DYCOKE_ALIASES.get(key, key): value for key, value in args.items()
                 if key in DYCOKE_ALIASES or key in dycoke_setting_names()}
    if not enabled:
        if overrides:
            raise ValueError(
                f"DyCoke settings {sorted(overrides)} were given with DyCoke off; set `dycoke=true` or drop them."
            )
        return None
    settings = {**(listed or {}), **overrides}
    DyCoke(**settings)  # the callback checks its own values now, before any model is built
    return settings


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
