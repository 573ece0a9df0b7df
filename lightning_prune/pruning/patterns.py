"""Layer patterns: glob patterns over module names (`fnmatch`, case-sensitive) plus inclusive numeric ranges.

A dot-separated segment `a-b` matches the integers a..b (inclusive): `model.layers.4-29.mlp` selects the MLPs of
decoder layers 4 to 29, which is LLM-Pruner's block-wise range `--block_mlp_layer_start 4 --block_mlp_layer_end 30`
(its end is exclusive). Globs still work in the other segments (`model.layers.4-29.self_attn*`).
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase

_RANGE_SEGMENT = re.compile(r"(?:(?<=^)|(?<=\.))(\d+)-(\d+)(?=$|\.)")


def _glob_regex(text: str) -> str:
    """A regex for a glob without ranges (`*`, `?`, `[...]`), as `fnmatch` reads it."""
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[" and "]" in text[i + 1:]:
            end = text.index("]", i + 1)
            body = text[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def ranges_of(pattern: str) -> list[tuple[int, int]]:
    """The `(a, b)` ranges of `pattern`'s range segments, in order."""
    return [(int(a), int(b)) for a, b in _RANGE_SEGMENT.findall(pattern)]


def _regex(pattern: str) -> re.Pattern:
    pieces = _RANGE_SEGMENT.split(pattern)  # literal, a, b, literal, a, b, ..., literal
    parts = [_glob_regex(piece) if k % 3 == 0 else "" for k, piece in enumerate(pieces)]
    regex = "".join(part if k % 3 == 0 else (r"(\d+)" if k % 3 == 1 else "") for k, part in enumerate(parts))
    return re.compile(regex + r"\Z", re.DOTALL)


def matching_layers(pattern: str, names: list[str]) -> list[str]:
    """The names `pattern` matches (glob, with inclusive `a-b` range segments).

    Raises:
        ValueError: If a range is empty (`a > b`) or reaches past the layer numbers the names hold at its place
            (e.g. `model.layers.4-29.mlp` on a 2-layer model): the message gives the model's range.
    """
    ranges = ranges_of(pattern)
    if not ranges:
        return [name for name in names if fnmatchcase(name, pattern)]
    regex = _regex(pattern)
    found = [(name, [int(n) for n in match.groups()]) for name in names if (match := regex.match(name))]
    for k, (low, high) in enumerate(ranges):
        numbers = sorted({numbers[k] for _, numbers in found})
        if low > high:
            raise ValueError(f"`layers` pattern {pattern!r} must give ranges as low-high, got {low}-{high}.")
        if not numbers or low < numbers[0] or high > numbers[-1]:
            have = f"{numbers[0]}-{numbers[-1]}" if numbers else "none"
            raise ValueError(f"`layers` pattern {pattern!r} range {low}-{high} must lie within the model's layers "
                             f"({have} at that place of the matching names), got {low}-{high}.")
    return [name for name, numbers in found
            if all(low <= n <= high for n, (low, high) in zip(numbers, ranges, strict=True))]
