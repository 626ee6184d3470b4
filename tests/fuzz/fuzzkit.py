"""Shared pieces of the fuzz suite: input mutations and the outcome every call must have.

A fuzzed call starts from valid arguments and changes one of them: a NaN, an infinity or a
huge value at some position, another dtype, another shape, another type, an empty batch, a
bad hyperparameter. The outcome must be one of
- a PriorlabError (or a TypeError / ValueError / RuntimeError) whose message names an argument;
- a result whose floating-point tensors and numbers are all finite (never a silent NaN).
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from hypothesis import strategies as st

from priorlab.errors import PriorlabError

SPECIAL_VALUES = (math.nan, math.inf, -math.inf, 1e30, -1e30, 3e38, 1e-45, 0.0)
OTHER_DTYPES = (torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.bool,
                torch.complex64)
BAD_SCALARS = (math.nan, math.inf, -math.inf, -1.0, 0.0, 1e30, True, "0.5", None,
               np.float64(0.5), torch.tensor([0.5, 0.5]))
STANDARD_ERRORS = (TypeError, ValueError, RuntimeError)


@dataclass
class Target:
    """A function under fuzz: ``build(gen, batch, classes)`` returns valid keyword arguments."""

    name: str
    fn: Callable[..., Any]
    build: Callable[[torch.Generator, int, int], dict]
    names: tuple[str, ...] = ()  # argument names the messages may use, beyond the signature's

    def argument_names(self) -> set[str]:
        try:
            names = set(inspect.signature(self.fn).parameters) - {"self"}
        except (TypeError, ValueError):
            names = set()
        return names | set(self.names)


# ------------------------------------------------------------------------------ valid inputs

def randn(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * scale


def labels(gen: torch.Generator, batch: int, classes: int) -> torch.Tensor:
    return torch.randint(0, classes, (batch,), generator=gen)


def probabilities(gen: torch.Generator, batch: int, classes: int) -> torch.Tensor:
    return torch.softmax(randn(gen, batch, classes), dim=1)


# ------------------------------------------------------------------------------ mutations

def mutate_tensor(draw, x: torch.Tensor) -> Any:
    """One change to a tensor: a special value somewhere, a dtype, a shape or a type."""
    kind = draw(st.sampled_from(("value", "scale", "dtype", "shape", "type")))
    if kind == "value" and x.numel() and x.is_floating_point():
        x = x.clone()
        flat = x.view(-1)
        flat[draw(st.integers(0, x.numel() - 1))] = draw(st.sampled_from(SPECIAL_VALUES))
        return x
    if kind == "value" and x.numel():  # integer tensors (labels, indices): out of range
        x = x.clone()
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = draw(st.sampled_from((-1, 10**6, 2**40)))
        return x
    if kind == "scale" and x.is_floating_point():
        return x * draw(st.sampled_from((1e30, 1e-30, -1.0, 0.0)))
    if kind == "dtype":
        return x.to(draw(st.sampled_from(OTHER_DTYPES)))
    if kind == "shape":
        change = draw(st.sampled_from(("unsqueeze", "flatten", "extra", "narrow", "scalar")))
        if change == "unsqueeze":
            return x.unsqueeze(0)
        if change == "flatten":
            return x.reshape(-1)
        if change == "extra":
            return x.unsqueeze(-1).expand(*x.shape, 2).contiguous()
        if change == "narrow" and x.ndim and x.shape[-1] > 0:
            return x[..., :-1]
        return x.reshape(-1)[:1].reshape(()) if x.numel() else torch.tensor(0.0)
    if kind == "type":
        return draw(st.sampled_from((x.tolist(), x.numpy(), None, 1.5)))
    return x


def mutate_argument(draw, value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return mutate_tensor(draw, value)
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        changed = list(value)
        i = draw(st.integers(0, len(changed) - 1))
        changed[i] = mutate_tensor(draw, changed[i])
        return type(value)(changed) if draw(st.booleans()) else changed[:1]
    return draw(st.sampled_from(BAD_SCALARS))


# ------------------------------------------------------------------------------ the property

def _words(text: str) -> str:
    return " " + re.sub(r"[^a-z0-9]+", " ", text.lower()) + " "


def names_an_argument(message: str, names) -> bool:
    words = _words(message)
    return any(_words(name) in words for name in names)


def assert_finite(value: Any, where: str) -> None:
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            assert bool(torch.isfinite(value).all()), f"{where}: non-finite result {value}"
    elif isinstance(value, float):
        assert math.isfinite(value), f"{where}: non-finite result {value}"
    elif isinstance(value, np.ndarray) and value.dtype.kind in "fc":
        assert np.isfinite(value).all(), f"{where}: non-finite result {value}"
    elif isinstance(value, (list, tuple)):
        for item in value:
            assert_finite(item, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            assert_finite(item, f"{where}[{key!r}]")


def check_outcome(target: Target, kwargs: dict, call: Callable[[], Any] | None = None) -> Any:
    """Run the call and assert the property; returns the result (None when it raised)."""
    names = target.argument_names()
    try:
        result = call() if call is not None else target.fn(**kwargs)
    except PriorlabError as error:
        # with a single argument there is nothing to confuse it with
        assert len(kwargs) == 1 or names_an_argument(str(error), names), \
            f"{target.name}: PriorlabError does not name an argument {sorted(names)}: {error}"
        return None
    except STANDARD_ERRORS as error:
        assert names_an_argument(str(error), names), (
            f"{target.name}: {type(error).__name__} without naming an argument "
            f"{sorted(names)}: {error}")
        return None
    assert_finite(result, target.name)
    return result
