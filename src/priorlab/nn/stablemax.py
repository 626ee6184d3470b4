"""StableMax: a Softmax replacement that cannot collapse numerically.

Prieto, Barsbey, Mediano & Birdal, "Grokking at the Edge of Numerical Stability", ICLR 2025,
arXiv:2501.04697 (official code: LucasPrietoAl/grokking-at-the-edge-of-numerical-stability,
``utils.py``).

StableMax replaces ``exp`` in Softmax by a function that grows linearly for positive inputs and
decays like ``1/|x|`` for negative ones::

    s(x) = x + 1        if x >= 0
    s(x) = 1 / (1 - x)  if x <  0
    StableMax(x)_i = s(x_i) / sum_j s(x_j)

Because ``s`` grows slowly, scaling the logits up does not push one entry's share to exactly 1
in floating point (the "Softmax Collapse" that stops learning without regularisation), so a
model can keep training long after it fits its training set. As in the official code the
computation runs in float64 by default; the result is cast back to the input's dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from priorlab.errors import PriorlabError

_REDUCTIONS = ("mean", "sum", "none")


def _check_logits(x: torch.Tensor, name: str, dim: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise PriorlabError(f"{name} needs a torch.Tensor of logits, got {type(x).__name__}")
    if not x.is_floating_point():
        raise PriorlabError(f"{name} needs floating-point logits, got {x.dtype}; "
                            f"cast them with .float()")
    if x.dim() == 0:
        raise PriorlabError(f"{name} needs logits with at least one dimension of classes, got a "
                            f"scalar")
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise PriorlabError(f"{name}: dim must be an integer (the class dimension), got {dim!r}")
    if not -x.dim() <= dim < x.dim():
        raise PriorlabError(f"{name}: dim={dim} is out of range for a tensor with {x.dim()} "
                            f"dimension(s)")
    if not bool(torch.isfinite(x).all()):
        raise PriorlabError(f"{name} got NaN or infinite logits; check the model's outputs "
                            f"(learning rate too high?)")


def _check_dtype(dtype: torch.dtype) -> None:
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise PriorlabError(f"dtype must be a floating-point torch.dtype such as torch.float64, "
                            f"got {dtype!r}")


def _s(x: torch.Tensor) -> torch.Tensor:
    # The negative branch sees min(x, 0), so the branch torch.where discards never divides by
    # zero and its (masked) gradient stays finite; selected values are unchanged.
    return torch.where(x >= 0, x + 1, 1 / (1 - torch.clamp(x, max=0)))


def _log_stablemax(x: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    s = _s(x.to(dtype))
    return torch.log(s) - torch.log(s.sum(dim=dim, keepdim=True))


def stablemax(x: torch.Tensor, dim: int = -1, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """StableMax probabilities along ``dim``, computed in ``dtype`` and returned in ``x.dtype``."""
    _check_logits(x, "stablemax", dim)
    _check_dtype(dtype)
    s = _s(x.to(dtype))
    return (s / s.sum(dim=dim, keepdim=True)).to(x.dtype)


def log_stablemax(x: torch.Tensor, dim: int = -1, *,
                  dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Log of :func:`stablemax`, computed in ``dtype`` (float64 by default, as in the official code)
    and cast back to ``x.dtype``; gradients flow through the ``dtype`` computation."""
    _check_logits(x, "log_stablemax", dim)
    _check_dtype(dtype)
    return _log_stablemax(x, dim, dtype).to(x.dtype)


def stablemax_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean",
                            *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Cross-entropy with StableMax in place of Softmax: ``-log StableMax(logits)[target]``.

    ``logits`` is ``(..., C)`` with classes last, ``targets`` holds class indices of shape
    ``logits.shape[:-1]``. ``reduction`` is ``"mean"``, ``"sum"`` or ``"none"``. The loss is
    computed in ``dtype`` (float64, as the paper's runs) and returned in ``logits.dtype``.
    """
    if reduction not in _REDUCTIONS:
        raise PriorlabError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    _check_logits(logits, "stablemax_cross_entropy", -1)
    if not isinstance(targets, torch.Tensor) or targets.dtype not in (torch.int64, torch.int32,
                                                                      torch.int16, torch.uint8):
        got = targets.dtype if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise PriorlabError(f"stablemax_cross_entropy needs integer class-index targets, got "
                            f"{got}; pass labels as a LongTensor (not one-hot or float)")
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise PriorlabError(f"targets of shape {tuple(targets.shape)} do not match logits of shape "
                            f"{tuple(logits.shape)}; targets must have shape logits.shape[:-1]")
    if targets.numel() == 0:
        raise PriorlabError(f"stablemax_cross_entropy got an empty batch (logits of shape "
                            f"{tuple(logits.shape)}); pass at least one sample")
    num_classes = logits.shape[-1]
    if int(targets.min()) < 0 or int(targets.max()) >= num_classes:
        raise PriorlabError(f"targets must lie in [0, {num_classes - 1}] for {num_classes} classes, "
                            f"got values in [{int(targets.min())}, {int(targets.max())}]")
    _check_dtype(dtype)
    logprobs = _log_stablemax(logits, -1, dtype)
    losses = -logprobs.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    if reduction == "mean":
        losses = losses.mean()
    elif reduction == "sum":
        losses = losses.sum()
    return losses.to(logits.dtype)


class StableMax(nn.Module):
    """StableMax as a layer: probabilities (or log-probabilities with ``log=True``) along ``dim``,
    computed in ``compute_dtype`` and returned in the input's dtype.

    For training, call :func:`stablemax_cross_entropy` on raw logits: it keeps the per-sample
    losses in ``compute_dtype`` until the reduction.
    """

    def __init__(self, dim: int = -1, *, log: bool = False,
                 compute_dtype: torch.dtype = torch.float64):
        super().__init__()
        _check_dtype(compute_dtype)
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise PriorlabError(f"StableMax: dim must be an integer (the class dimension), got {dim!r}")
        self.dim = dim
        self.log = log
        self.compute_dtype = compute_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.log:
            return log_stablemax(x, self.dim, dtype=self.compute_dtype)
        return stablemax(x, self.dim, dtype=self.compute_dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, log={self.log}, compute_dtype={self.compute_dtype}"
