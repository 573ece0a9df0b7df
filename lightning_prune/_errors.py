"""Failures a user can fix, said in one line naming the argument or file and what to do.

jsonargparse reports a wrong value with a report on every type of a Union it tried (tens of lines), and Python's
own errors (a full disk, a missing GPU) come as tracebacks. `one_line_error` turns each into a single sentence; an
exception that is none of these is re-raised, so a real bug still shows its traceback.
"""

from __future__ import annotations

import errno
import re
from argparse import ArgumentError
from typing import Any

_OUR_MESSAGE = re.compile(r"^(?:\s*-\s*|\s*\w*Error: )?(`[^`]+`.+)$", re.MULTILINE)
# jsonargparse's own phrases in a Union report, as opposed to the message a class raised.
_GENERIC = re.compile(
    r"^(Expected a |Not a valid subclass|Problem with given class_path|Does not validate|a class path|a dict with|"
    r"a dict without|Subclass types expect|Import path|Option '|No action for key|Given value|Not a valid)"
)
_REMEDIES = {
    errno.EACCES: "Check its permissions, or write elsewhere (--trainer.default_root_dir, --study_dir).",
    errno.EPERM: "Check its permissions, or write elsewhere (--trainer.default_root_dir, --study_dir).",
    errno.EROFS: "Write elsewhere (--trainer.default_root_dir, --study_dir): the file system is read-only.",
    errno.ENOSPC: "Free space on that disk, or write elsewhere (--trainer.default_root_dir, --study_dir).",
    errno.EDQUOT: "Free space within your quota, or write elsewhere (--trainer.default_root_dir, --study_dir).",
}


def _own_message(text: str) -> str | None:
    """The message our code raised inside a jsonargparse report, if there is one.

    jsonargparse lists what each Union subtype said (``- <message>``); ours is the one that is not its own
    generic phrase. Our messages usually start with a backtick, but not always (``Can't provide both ...``).
    """
    ours = _OUR_MESSAGE.findall(text)
    if ours:
        return ours[0].strip()
    if "Errors:" not in text:
        return None
    listed = re.findall(r"^\s*- (.+)$", text.split("Errors:", 1)[1], flags=re.MULTILINE)
    specific = [line.strip() for line in listed if not _GENERIC.match(line.strip())]
    return specific[0] if specific else None


def _parse_error_line(text: str, subcommand: str) -> str:
    """One sentence for a jsonargparse report: the flag, what it must be and the value given."""
    ours = _own_message(text)
    if ours:
        return ours
    key = re.search(r'Parser key "([^"]+)"', text)
    flag = f"--{key.group(1)}" if key else "an argument"
    unknown = re.search(r"Option '([^']+)' is not accepted", text) or re.search(r"No action for key \"([^\"]+)\"", text)
    owner = re.search(r"Problem with given class_path '([^']+)'", text)
    if unknown and owner:
        return (
            f"`{flag}.init_args` must be arguments of {owner.group(1)}, got unknown {unknown.group(1)!r}. "
            f"List them with: lightning-prune {subcommand} {flag}.help {owner.group(1)}"
        )
    expected = re.findall(r"Expected a <class '([\w.]+)'>", text)
    given = re.search(r"Given value: (.*)", text)
    if expected and given:
        names = " or ".join(dict.fromkeys("null" if name == "NoneType" else name for name in expected))
        return f"`{flag}` must be {names}, got {given.group(1).strip()!r}."
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else repr(text)


def one_line_error(error: Exception, subcommand: str) -> str:
    """The one-line message of a failure the user can fix.

    Raises:
        Exception: ``error`` itself when it is not one of those (a bug keeps its traceback).
    """
    if isinstance(error, ArgumentError):
        return _parse_error_line(str(error), subcommand)
    if isinstance(error, OSError) and not isinstance(error, FileNotFoundError) and error.errno in _REMEDIES:
        where = f"`{error.filename}`" if error.filename else "A file"
        return f"{where} could not be written: {error.strerror}. {_REMEDIES[error.errno]}"
    if type(error).__name__ == "MisconfigurationException" and re.search(r"gpu|cuda|accelerator", str(error), re.I):
        return (
            f"`--trainer.accelerator` asks for a GPU, got none visible here ({str(error).strip()}). "
            "Use --trainer.accelerator cpu (or auto), or run where a CUDA GPU is visible."
        )
    if type(error).__name__ == "ProcessRaisedException":  # a spawned process (ddp_spawn) failed: its own error
        raised = re.findall(r"^(\w+): (\S.*)$", str(error), flags=re.MULTILINE)
        if raised and raised[-1][0] in ("ValueError", "FileNotFoundError", "TypeError"):
            return _own_message(raised[-1][1]) or raised[-1][1].strip()
    if isinstance(error, (ValueError, FileNotFoundError, TypeError)):
        # Our own validation raises these naming the argument, also when jsonargparse wraps them in a report.
        return _own_message(str(error)) or str(error).strip().splitlines()[0]
    raise error


def check_same_model(hyper_parameters: dict[str, Any], config_model: Any, ckpt_path: str) -> None:
    """Refuse a checkpoint whose network differs from the config's (LightningCLI would take the checkpoint's).

    Raises:
        ValueError: naming both models.
    """
    if not hyper_parameters or config_model is None:
        return
    given = config_model.as_dict() if hasattr(config_model, "as_dict") else dict(config_model)
    init_args = dict(given.get("init_args") or {})
    stored = {"class": str(hyper_parameters.get("_class_path", "")).rsplit(".", 1)[-1]}
    wanted = {"class": str(given.get("class_path", "")).rsplit(".", 1)[-1]}
    if "model" in hyper_parameters:  # the network of our modules (ImageClassifier, BatchedMaskedClassifier)
        stored |= {"model": hyper_parameters["model"], "model_kwargs": hyper_parameters.get("model_kwargs") or {}}
        wanted |= {"model": init_args.get("model"), "model_kwargs": init_args.get("model_kwargs") or {}}
    if not stored["class"]:
        stored["class"] = wanted["class"]  # a checkpoint written outside LightningCLI does not record its class
    if stored != wanted:
        raise ValueError(
            f"`--ckpt_path` must hold a checkpoint of the config's model {_describe(wanted)}, got {ckpt_path}, "
            f"a checkpoint of {_describe(stored)}. Use a checkpoint of this model, or the config it was trained with."
        )


def _describe(identity: dict[str, Any]) -> str:
    arguments = ", ".join(f"{key}={value!r}" for key, value in identity.items() if key != "class" and value != {})
    return f"{identity['class']}({arguments})"
