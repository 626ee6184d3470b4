"""The shared checks in priorlab.validation: what they accept, and that errors name the argument."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_same_dtype, check_tensor

ANYTHING = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=3),
                     st.lists(st.floats(), max_size=2))


@given(value=ANYTHING, low=st.one_of(st.none(), st.floats(-10, 10)),
       high=st.one_of(st.none(), st.floats(-10, 10)), integer=st.booleans())
def test_check_number_returns_a_number_in_range_or_names_the_argument(value, low, high, integer):
    try:
        got = check_number(value, "my_arg", who="f", low=low, high=high, integer=integer)
    except PriorlabError as error:
        assert str(error).startswith("f: my_arg must be")
        return
    assert isinstance(got, int if integer else float) and not isinstance(got, bool)
    assert math.isfinite(got) and (low is None or got >= low) and (high is None or got <= high)


@pytest.mark.parametrize("value, kwargs, words", [
    (torch.zeros(2, 3), {"ndim": 1}, "must have 1 dimension"),
    (torch.zeros(2, 3), {"ndim": (1, 3)}, "1 or 3 dimension"),
    (torch.zeros(2), {"min_ndim": 2}, "at least 2"),
    (torch.zeros(2, 3), {"shape": (2, None, 1)}, r"shape \(2, \*, 1\)"),
    (torch.zeros(2, 3), {"shape": (3, None)}, r"shape \(3, \*\)"),
    (torch.zeros(2), {"dtype": "integer"}, "dtype integer, got float32"),
    (torch.zeros(2, dtype=torch.bool), {"dtype": ("float", torch.int64)}, "float or int64"),
    (torch.zeros(0, 3), {"non_empty": True}, "is empty"),
    (torch.tensor([1.0, math.nan, math.inf]), {"finite": True}, "1 NaN and 1 infinite"),
    ([1.0], {}, "must be a torch.Tensor, got list"),
])
def test_check_tensor_names_the_argument_and_the_problem(value, kwargs, words):
    with pytest.raises(PriorlabError, match=r"^g: x_in ") as caught:
        check_tensor(value, "x_in", who="g", **kwargs)
    assert caught.match(words)


def test_check_tensor_returns_a_valid_tensor_unchanged():
    x = torch.ones(2, 3, dtype=torch.int32)
    assert check_tensor(x, "x", ndim=2, shape=(2, None), dtype="integer", finite=True,
                        non_empty=True) is x


def test_check_same_dtype_lists_each_tensor_and_its_dtype():
    a, b = torch.zeros(2), torch.zeros(2, dtype=torch.float64)
    check_same_dtype("h", a=a, c=torch.ones(3))
    with pytest.raises(PriorlabError, match=r"^h: a, b must share one dtype, got a float32, b float64$"):
        check_same_dtype("h", a=a, b=b)
