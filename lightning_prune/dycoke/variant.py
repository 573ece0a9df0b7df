"""DyCoke's two rule variants as one object that owns their rules (validation, counts, window, score dtype, decode).

`official` reproduces the published code (KD-TAO/DyCoke) exactly; `refined` is ours (see `ttm` and `kv_pruning` for
what each rule means). Call sites ask a `Variant` for a rule instead of comparing its name. A leaf module: pure Python.
"""

from __future__ import annotations

from enum import StrEnum

_PUBLISHED_WINDOW = 4  # the published code merges in windows of 4 frames, fixed


class Variant(StrEnum):
    """`official` (the published code) or `refined` (ours); a `str`, so it compares and prints as its name."""

    OFFICIAL = "official"
    REFINED = "refined"

    @classmethod
    def problem(cls, value: object) -> str | None:
        """Why `value` is not a variant (naming the argument, the value and the choices), or None."""
        if value in VARIANTS:
            return None
        return f"`variant` must be one of {list(VARIANTS)}, got {value!r}."

    @classmethod
    def of(cls, value: object) -> Variant:
        """The variant named `value`.

        Raises:
            ValueError: Unless `value` is one of `VARIANTS`.
        """
        problem = cls.problem(value)
        if problem is not None:
            raise ValueError(problem)
        return cls(value)

    @property
    def published(self) -> bool:
        """Whether this is the published code's behaviour: its merged token order, dropped frames, decode candidates
        (not the last frame token nor what follows the frames) and similar decode steps (the full cache)."""
        return self is Variant.OFFICIAL

    @property
    def default_score_dtype(self) -> str:
        """Dtype of the decode step's attention scores when none is given: the model's (as published) or float32."""
        return "model" if self.published else "float32"

    def window_problem(self, window: object) -> str | None:
        """Why this variant cannot merge in windows of `window` frames (`official`: 4 only), or None."""
        if self.published and window != _PUBLISHED_WINDOW:
            return (f"`window` must be {_PUBLISHED_WINDOW} with variant='official' (the published code's), got "
                    f"{window!r}. Use variant='refined' for other windows.")
        return None

    def kept_count(self, num_tokens: int, ratio: float) -> int:
        """Of `num_tokens`, how many survive pruning a `ratio` of them: `official` computes `int(num_tokens *
        (1 - ratio))` in floating point as published (`10 * (1 - 0.9)` gives 0), `refined` without the float noise
        (gives 1)."""
        if self.published:
            return int(num_tokens * (1.0 - ratio))
        # round() first so that e.g. (1 - 0.9) * 10 = 0.9999999999999998 counts as 1, as the formula means
        return int(round((1.0 - ratio) * num_tokens, 9))


#: The variants' names (plain strings, for messages and the config's choices).
VARIANTS = tuple(variant.value for variant in Variant)
