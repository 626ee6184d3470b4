"""Shared checks on user-supplied arguments.

Every check raises :class:`priorlab.errors.PriorlabError` with one line that names the function
(``who``), the argument (``name``), what it must be and what it got, plus an optional ``hint``
saying what to do. Checks return the value (a number converted to ``float``/``int``), so a caller
can write ``lr = check_number(lr, "lr", who="Lion", low=0)``.

Typical use::

    check_tensor(logits, "logits", who="elr_loss", ndim=2, dtype="float", finite=True,
                 non_empty=True)
    check_tensor(labels, "labels", who="elr_loss", shape=(logits.shape[0],), dtype="integer")
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from priorlab.errors import PriorlabError

# dtype families accepted by ``check_tensor(dtype=...)``
_FAMILIES = {
    "float": lambda t: t.is_floating_point(),
    "integer": lambda t: not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool),
    "bool": lambda t: t.dtype == torch.bool,
}


def describe(x) -> str:
    """A short description of ``x`` for error messages: ``float32 tensor of shape (2, 3)``."""
    if isinstance(x, torch.Tensor):
        return f"{str(x.dtype).removeprefix('torch.')} tensor of shape {tuple(x.shape)}"
    return f"{type(x).__name__} {x!r}" if isinstance(x, (numbers.Number, str)) else type(x).__name__


def _fail(who: str | None, message: str, hint: str = "") -> PriorlabError:
    prefix = f"{who}: " if who else ""
    suffix = f"; {hint}" if hint else ""
    return PriorlabError(f"{prefix}{message}{suffix}")


def _shape_text(shape: Sequence) -> str:
    parts = ["*" if s is None else str(s) for s in shape]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def check_tensor(x, name: str, *, who: str | None = None, ndim: int | Sequence[int] | None = None,
                 min_ndim: int | None = None, shape: Sequence[int | None] | None = None,
                 dtype: str | torch.dtype | Sequence | None = None, finite: bool = False,
                 non_empty: bool = False, hint: str = "") -> torch.Tensor:
    """Check that ``x`` is a tensor meeting every given condition, and return it.

    Args:
        ndim: the number of dimensions, or a sequence of allowed numbers.
        min_ndim: the least number of dimensions.
        shape: the exact shape; ``None`` entries match any size.
        dtype: ``"float"``, ``"integer"``, ``"bool"``, a ``torch.dtype``, or a sequence of these.
        finite: no NaN or infinity (checked last, as it reads every element).
        non_empty: at least one element.
    """
    if not isinstance(x, torch.Tensor):
        raise _fail(who, f"{name} must be a torch.Tensor, got {describe(x)}", hint)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            wanted = " or ".join(str(n) for n in allowed)
            raise _fail(who, f"{name} must have {wanted} dimension(s), got {describe(x)}", hint)
    if min_ndim is not None and x.ndim < min_ndim:
        raise _fail(who, f"{name} must have at least {min_ndim} dimension(s), got {describe(x)}",
                    hint)
    if shape is not None and (x.ndim != len(shape) or any(
            want is not None and got != want for got, want in zip(x.shape, shape))):
        raise _fail(who, f"{name} must have shape {_shape_text(shape)}, got {describe(x)}", hint)
    if dtype is not None:
        allowed = (dtype,) if isinstance(dtype, (str, torch.dtype)) else tuple(dtype)
        if not any(_FAMILIES[d](x) if isinstance(d, str) else x.dtype == d for d in allowed):
            wanted = " or ".join(str(d).removeprefix("torch.") for d in allowed)
            raise _fail(who, f"{name} must have dtype {wanted}, got {describe(x)}", hint)
    if non_empty and x.numel() == 0:
        raise _fail(who, f"{name} is empty ({describe(x)})", hint or "pass at least one element")
    if finite:
        check_finite(x, name, who=who, hint=hint)
    return x


def check_finite(x: torch.Tensor, name: str, *, who: str | None = None, hint: str = "") -> torch.Tensor:
    """Check that ``x`` holds no NaN or infinity (integer tensors always pass)."""
    if (x.is_floating_point() or x.is_complex()) and not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise _fail(who, f"{name} contains {n_nan} NaN and {n_inf} infinite value(s) "
                         f"({describe(x)})", hint)
    return x


def check_same_dtype(who: str | None, **tensors: torch.Tensor) -> None:
    """Check that the named tensors share one dtype (they meet in a matrix product)."""
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) > 1:
        listing = ", ".join(f"{name} {str(d).removeprefix('torch.')}" for name, d in dtypes.items())
        raise _fail(who, f"{', '.join(dtypes)} must share one dtype, got {listing}")


def is_real_number(x) -> bool:
    """A real Python/NumPy number or a one-element real tensor; ``bool`` is not a number here."""
    if isinstance(x, torch.Tensor):
        return x.numel() == 1 and not x.is_complex() and x.dtype != torch.bool
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_number(x, name: str, *, who: str | None = None, low: float | None = None,
                 high: float | None = None, low_open: bool = False, high_open: bool = False,
                 integer: bool = False, hint: str = ""):
    """Check that ``x`` is a finite real number in the given range and return it as a Python
    ``float`` (or ``int`` with ``integer=True``). ``low_open``/``high_open`` exclude the bound."""
    kind = "an integer" if integer else "a finite number"
    integral = isinstance(x, numbers.Integral) or (isinstance(x, torch.Tensor)
                                                    and not x.is_floating_point())
    if not is_real_number(x) or (integer and not integral):
        raise _fail(who, f"{name} must be {kind}, got {describe(x)}", hint)
    value = int(x) if integer else float(x)
    if not math.isfinite(value):
        raise _fail(who, f"{name} must be {kind}, got {value!r}", hint)
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        where = (f"in {lo}, {hi}" if low is not None and high is not None
                 else f"{'>' if low_open else '>='} {low:g}" if low is not None
                 else f"{'<' if high_open else '<='} {high:g}")
        raise _fail(who, f"{name} must be {kind} {where}, got {x!r}", hint)
    return value
