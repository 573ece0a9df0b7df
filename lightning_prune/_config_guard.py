"""No code from configs: every `class_path` of a config is checked before jsonargparse reads any of it.

jsonargparse builds any ``{class_path, init_args}`` it meets, also inside a free-form ``dict`` field (a schedule,
``model_kwargs``, a transformers config), where nothing checks the class. So the raw input is walked first: every
``--config`` file, every file such a value includes, and every command-line value, parsed as YAML the way
jsonargparse will. A ``class_path`` is accepted only in a slot whose declared type is a class (``model``,
``data``, ``trainer.callbacks``, an optimizer, ...) and only for a subclass of it; anywhere else it is refused in
one message naming its place in the config. Strings that hold YAML (``"{class_path: ...}"``) are walked too.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Union

from lightning_prune._config_types import load_yaml, unknown_argument_problem, value_problem

_MAX_INCLUDED_BYTES = 16 << 20
_SPEC_KEYS = ("class_path", "init_args", "dict_kwargs", "__path__")
# Types whose values are data, never a class, whatever they hold.
_DATA_TYPES = (str, bytes, int, float, bool, complex, type(None), dict, list, tuple, set, frozenset, Path, object)


class Slot:
    """A place of a config that takes a class: ``bases`` (one of which the class must subclass)."""

    def __init__(self, bases: tuple[type, ...], init_args_are_data: bool = False) -> None:
        self.bases = bases
        # True where our code (not jsonargparse) builds the class with its init_args as given: they are data.
        self.init_args_are_data = init_args_are_data


class Group:
    """The arguments of a parser (or part of one) by dotted name: ``{"trainer.callbacks": <type>, ...}``."""

    def __init__(self, hints: Mapping[str, Any], prefix: str = "") -> None:
        self.hints = hints
        self.prefix = prefix

    def child(self, key: str) -> Any:
        name = f"{self.prefix}{key}"
        if name in self.hints:
            return self.hints[name]
        if any(other.startswith(f"{name}.") for other in self.hints):
            return Group(self.hints, f"{name}.")
        return Any  # an unknown key: the parser refuses it; nothing under it may name a class


def parser_hints(parser: Any) -> dict[str, Any]:
    """``{dest: type}`` of a jsonargparse parser's typed arguments."""
    return {
        action.dest: action._typehint
        for action in parser._actions
        if hasattr(action, "_typehint") and not action.dest.endswith(".help")
    }


def _union_members(hint: Any) -> list[Any]:
    origin = typing.get_origin(hint)
    if origin is Union or type(hint).__name__ == "UnionType":
        return [member for arg in typing.get_args(hint) for member in _union_members(arg)]
    if origin is typing.Annotated:
        return _union_members(typing.get_args(hint)[0])
    return [hint]


def _is_class_type(hint: Any) -> bool:
    return (
        inspect.isclass(hint)
        and hint is not Any  # a class since Python 3.11
        and hint not in _DATA_TYPES
        and not issubclass(hint, (Mapping, str, bytes, int, float, Path))
        and not dataclasses.is_dataclass(hint)
        and not typing.is_typeddict(hint)
    )


def _class_bases(hint: Any) -> tuple[type, ...]:
    """The classes a ``class_path`` may subclass at a place of type ``hint`` (empty: none may be named there)."""
    if isinstance(hint, Slot):
        return hint.bases
    bases: list[type] = []
    for member in _union_members(hint):
        origin = typing.get_origin(member)
        args = typing.get_args(member)
        if _is_class_type(member):
            bases.append(member)
        elif origin is collections.abc.Callable and args:
            bases += _class_bases(args[-1])  # OptimizerCallable: the classes whose instances the callable returns
        elif origin in (list, collections.abc.Iterable, collections.abc.Sequence) and args:
            bases += _class_bases(args[0])  # jsonargparse also takes a single item where a list is typed
    return tuple(dict.fromkeys(bases))


def _child_hint(hint: Any, key: str | int) -> Any:
    """The type of ``value[key]`` for a value of type ``hint`` (``Any``: data)."""
    if isinstance(hint, Group):
        return hint.child(str(key)) if isinstance(key, str) else Any
    for member in _union_members(hint):
        origin = typing.get_origin(member)
        args = typing.get_args(member)
        if isinstance(key, int) and origin in (list, tuple, collections.abc.Iterable, collections.abc.Sequence):
            if args:
                return args[0]
        if isinstance(key, str) and origin in (dict, collections.abc.Mapping) and len(args) == 2:
            return args[1]
        if isinstance(key, str) and dataclasses.is_dataclass(member):
            hints = typing.get_type_hints(member)
            if key in hints:
                return hints[key]
    return Any


def _parameter_hint(cls: type, name: str) -> Any:
    """The declared type of ``cls``'s constructor argument ``name`` (searching the parents it passes
    ``**kwargs`` to); ``Any`` when undeclared."""
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            parameters = inspect.signature(init).parameters
        except (TypeError, ValueError):
            continue
        if name in parameters:
            try:
                hints = typing.get_type_hints(init)
            except Exception:  # noqa: BLE001  (an unresolvable annotation: treated as data)
                return Any
            return hints.get(name, Any)
    return Any


def describe(keys: tuple[str | int, ...]) -> str:
    text = ""
    for key in keys:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text or "the config"


class ConfigWalker:
    """Walks raw config values, refusing every ``class_path`` outside a class slot (see the module doc).

    Args:
        root: The type of the whole config (a `Group` of the parser's arguments).
        slots: Places (key tuples, list indices left out) that take a class although typed as a dict.
        resolve: ``(class_path, bases) -> class``, raising ``ValueError`` when it names no subclass of ``bases``.
        expected: The places that take a class, for the message.
    """

    def __init__(
        self,
        root: Any,
        resolve: Callable[[str, tuple[type, ...]], type],
        slots: Mapping[tuple[str, ...], Slot] | None = None,
        expected: str = "model, data, trainer.callbacks, optimizers, ...",
    ) -> None:
        self.root = root
        self.expected = expected
        self.resolve = resolve
        self.slots = dict(slots or {})
        self.merged: dict[str, Any] = {}
        self._prefix = ""  # what the sources seen so far set (for the class of a dotted flag)

    def check(self, value: Any, keys: tuple[str | int, ...] = (), base_dir: Path | None = None) -> None:
        """Check one source (a config file's content or a flag's value at ``keys``), then remember it.

        Raises:
            ValueError: naming the place of the first ``class_path`` that may not be there.
        """
        if keys and keys[-1] == "class_path":  # `--model.class_path X`: the spec `{class_path: X}` of `model`
            keys, value = keys[:-1], {"class_path": value}
        self._prefix = "--" if keys else ""  # a flag is named as typed; a file's setting by its place
        hint = self.root
        for position, key in enumerate(keys):
            if isinstance(hint, _InitArgs) and isinstance(key, str):
                problem = unknown_argument_problem(self._name(keys[:position]), hint.cls, [key])
                if problem is not None:
                    raise ValueError(problem)
            hint = self._hint_at(keys[:position], hint, key)
        self._walk(value, keys, hint, base_dir)
        self._remember(keys, value)

    # -- walking -----------------------------------------------------------------------------------------------
    def _hint_at(self, parent: tuple[str | int, ...], hint: Any, key: str | int) -> Any:
        named = tuple(k for k in (*parent, key) if isinstance(k, str))
        if named in self.slots:
            return self.slots[named]
        if isinstance(hint, _InitArgs):
            return hint.hint(key)
        if isinstance(hint, Group):
            return hint.child(key) if isinstance(key, str) else Any
        bases = _class_bases(hint)
        if bases and isinstance(key, str):  # a key of a class spec (a dotted flag: its class comes from before)
            slot = hint if isinstance(hint, Slot) else Slot(bases)
            return self._spec_child(slot, key, self._known_class(parent, slot))
        if isinstance(hint, Slot):
            return hint
        return _child_hint(hint, key)

    def _walk(self, value: Any, keys: tuple[str | int, ...], hint: Any, base_dir: Path | None) -> None:
        if not isinstance(hint, (Slot, Group)) and keys and not (isinstance(value, str) and "class_path" in value):
            problem = value_problem(self._name(keys), value, hint)
            if problem is not None:
                raise ValueError(problem)
        if isinstance(value, str):
            self._walk_string(value, keys, hint, base_dir)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                plain_slot = isinstance(hint, Slot) and not isinstance(hint, _InitArgs)
                self._walk(item, (*keys, index), hint if plain_slot else _child_hint(hint, index), base_dir)
        elif isinstance(value, dict):
            self._walk_mapping(value, keys, hint, base_dir)

    def _walk_mapping(self, value: dict, keys: tuple[str | int, ...], hint: Any, base_dir: Path | None) -> None:
        if isinstance(hint, _InitArgs):
            problem = unknown_argument_problem(self._name(keys), hint.cls, [str(key) for key in value])
            if problem is not None:
                raise ValueError(problem)
            for key, item in value.items():
                self._walk(item, (*keys, key), self._slot_or(keys, key, hint.hint(key)), base_dir)
            return
        bases = _class_bases(hint)
        if bases:
            slot = hint if isinstance(hint, Slot) else Slot(bases)
            if "class_path" in value:
                cls = self._checked_class(value["class_path"], keys, slot)
            else:
                cls = self._known_class(keys, slot)
            for key, item in value.items():
                if key != "class_path":
                    self._walk(item, (*keys, key), self._spec_child(slot, key, cls), base_dir)
            return
        if "class_path" in value:
            raise ValueError(self._refusal(keys, value["class_path"]))
        for key, item in value.items():
            self._walk(item, (*keys, key), self._slot_or(keys, key, _child_hint(hint, key)), base_dir)

    def _slot_or(self, keys: tuple[str | int, ...], key: Any, hint: Any) -> Any:
        named = tuple(k for k in (*keys, key) if isinstance(k, str))
        return self.slots.get(named, hint)

    def _spec_child(self, slot: Slot, key: Any, cls: type | None) -> Any:
        """The type of ``key`` inside a class spec of ``cls`` (None: unknown, so its arguments are data)."""
        if cls is None or slot.init_args_are_data or (key in _SPEC_KEYS and key != "init_args"):
            return Any
        return _InitArgs(cls) if key == "init_args" else _parameter_hint(cls, key)

    def _walk_string(self, value: str, keys: tuple[str | int, ...], hint: Any, base_dir: Path | None) -> None:
        included = _included_file(value, base_dir)
        if included is not None:
            text = _read_text(included)
            if text is not None and "class_path" in text:
                self._walk(load_yaml(text), keys, hint, included.parent)
            return
        if "class_path" in value:
            try:
                parsed = load_yaml(value)
            except Exception:  # noqa: BLE001  (not YAML: a plain string, which names nothing)
                return
            if isinstance(parsed, (dict, list)):
                self._walk(parsed, keys, hint, base_dir)
            return
        bases = _class_bases(hint)
        if bases and "." in value and str not in _union_members(hint) and not isinstance(hint, Group):
            self._checked_class(value, keys, hint if isinstance(hint, Slot) else Slot(bases))

    # -- classes -----------------------------------------------------------------------------------------------
    def _checked_class(self, class_path: Any, keys: tuple[str | int, ...], slot: Slot) -> type:
        names = " or ".join(base.__name__ for base in slot.bases)
        place = f"{self._name(keys)}.class_path" if keys else "class_path"
        if not isinstance(class_path, str):
            raise ValueError(f"`{place}` must name a subclass of {names}, got {class_path!r}.")
        try:
            return self.resolve(class_path, slot.bases)
        except ValueError:
            raise ValueError(f"`{place}` must name a subclass of {names}, got {class_path!r}.") from None

    def _known_class(self, keys: tuple[str | int, ...], slot: Slot) -> type | None:
        """The class a spec at ``keys`` has from earlier sources (a dotted flag after the config file)."""
        node: Any = self.merged
        for key in keys:
            if isinstance(node, list):
                if isinstance(key, int):
                    node = node[key] if -len(node) <= key < len(node) else None
                    continue
                node = node[-1] if node else None  # jsonargparse applies a dotted flag to the last item
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, list):
            node = node[-1] if node else None
        class_path = node.get("class_path") if isinstance(node, dict) else node
        if not isinstance(class_path, str):
            return None
        try:
            return self.resolve(class_path, slot.bases)
        except ValueError:
            return None

    def _name(self, keys: tuple[str | int, ...]) -> str:
        return f"{self._prefix}{describe(keys)}"

    def _refusal(self, keys: tuple[str | int, ...], class_path: Any) -> str:
        return (
            f"`{self._name(keys)}` must hold data only, got `class_path: {class_path}` in it. A config may name a "
            f"class only where one is expected ({self.expected}); nothing named elsewhere is imported or run."
        )

    def _remember(self, keys: tuple[str | int, ...], value: Any) -> None:
        node = self.merged
        named = [key for key in keys if isinstance(key, str)]
        for key in named[:-1]:
            child = node.get(key)
            if isinstance(child, list):
                child = child[-1] if child and isinstance(child[-1], dict) else {}
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        if named:
            node[named[-1]] = _merge(node.get(named[-1]), value)
        elif isinstance(value, dict):
            self.merged = _merge(self.merged, value)


class _InitArgs(Slot):
    """The ``init_args`` of a known class: each key typed by its constructor."""

    def __init__(self, cls: type) -> None:
        super().__init__(())
        self.cls = cls

    def hint(self, key: Any) -> Any:
        return _parameter_hint(self.cls, key) if isinstance(key, str) else Any


def _merge(old: Any, new: Any) -> Any:
    if isinstance(old, dict) and isinstance(new, dict):
        merged = dict(old)
        for key, value in new.items():
            merged[key] = _merge(old.get(key), value)
        return merged
    if isinstance(old, list) and isinstance(new, dict) and "class_path" not in new and old:
        return [*old[:-1], _merge(old[-1], new)]
    return new


def _included_file(value: str, base_dir: Path | None) -> Path | None:
    """The file a string value names, as jsonargparse would read it (relative to the including file)."""
    if not value or "\n" in value or len(value) > 4096:
        return None
    candidates = [Path(value)]
    if base_dir is not None and not Path(value).is_absolute():
        candidates.append(base_dir / value)
    for candidate in candidates:
        try:
            if candidate.is_file() and candidate.stat().st_size <= _MAX_INCLUDED_BYTES:
                return candidate
        except OSError:
            continue
    return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def read_config_file(path: Path, flag: str = "--config") -> Any:
    """A config file's content, refusing in one line a file that is missing, empty, binary or not YAML.

    Raises:
        ValueError: naming ``flag`` and the file.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(f"`{flag}` must be a readable YAML file, got {str(path)!r}: {error.strerror}.") from None
    if not data.strip():
        raise ValueError(f"`{flag}` must be a YAML file with settings, got {str(path)!r}, which is empty.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"`{flag}` must be a YAML text file, got {str(path)!r}, which is binary.") from None
    try:
        content = load_yaml(text)
    except Exception as error:  # noqa: BLE001  (the YAML parser's errors: said in one line with the file)
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        reason = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"`{flag}` must be valid YAML, got {str(path)!r}{line}: {reason}.") from None
    if not isinstance(content, dict):
        raise ValueError(
            f"`{flag}` must be a YAML mapping of settings, got {str(path)!r}, which holds a {type(content).__name__}."
        )
    return content


def flag_values(argv: list[str]) -> Iterator[tuple[str, str | None]]:
    """``(flag name without dashes or "+", raw value or None)`` of each ``--flag value`` / ``--flag=value``."""
    position = 0
    while position < len(argv):
        argument = argv[position]
        position += 1
        if not argument.startswith("--"):
            continue
        name, has_value, value = argument[2:].partition("=")
        if not has_value:
            if position < len(argv) and not argv[position].startswith("--"):
                value = argv[position]
                position += 1
            else:
                yield name.rstrip("+"), None
                continue
        yield name.rstrip("+"), value


def check_argv(walker: ConfigWalker, argv: list[str], config_flag: str = "config") -> None:
    """Walk every ``--config`` file (and what it includes) and every flag value of ``argv`` in order.

    Raises:
        ValueError: for a config file that cannot be read, or a ``class_path`` where none may be.
    """
    for name, raw in flag_values(argv):
        if raw is None or name in ("help", "print_config"):
            continue
        if name == config_flag:
            path = Path(raw)
            if path.is_file() or not raw.lstrip().startswith("{"):
                walker.check(read_config_file(path, f"--{config_flag}"), (), path.parent)
            else:
                walker.check(load_yaml(raw), ())
            continue
        keys = tuple(name.split("."))
        try:
            value = load_yaml(raw) if raw.strip() else raw
        except Exception:  # noqa: BLE001  (not YAML: jsonargparse takes it as a string)
            value = raw
        walker.check(value, keys, Path.cwd())
