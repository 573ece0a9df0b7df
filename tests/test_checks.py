"""`lightning_prune._checks`: the one integer rule (a bool is not an integer) behind every int argument."""

import pytest

from lightning_prune._checks import check_int, is_int


@pytest.mark.parametrize(
    ("value", "minimum", "expected"),
    [(3, None, True), (-3, None, True), (3, 3, True), (2, 3, False), (True, None, False), (False, 0, False),
     (3.0, None, False), ("3", None, False), (None, None, False)],
)
def test_is_int_rejects_bools_floats_and_values_below_the_minimum(value, minimum, expected):
    assert is_int(value, minimum) is expected


def test_check_int_names_the_argument_and_the_minimum():
    check_int("depth", 8, 8)
    with pytest.raises(ValueError, match=r"^`depth` must be an integer >= 0, got True\.$"):
        check_int("depth", True, 0)
    with pytest.raises(ValueError, match=r"^`depth` must be an integer >= 8, got 7\.$"):
        check_int("depth", 7, 8)
