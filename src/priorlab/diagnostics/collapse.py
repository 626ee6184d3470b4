"""Softmax Collapse (SC) monitor.

Prieto, Barsbey, Mediano & Birdal, "Grokking at the Edge of Numerical Stability", ICLR 2025,
arXiv:2501.04697, Section 3 (the official ``logger.py`` counts samples whose max-shifted sum of
exponentials equals exactly 1).

When the true-class logit exceeds every other logit by enough, ``exp(z_j - z_max)`` for the other
classes is absorbed when added to 1, the computed Softmax is exactly one-hot, the sample's
cross-entropy is exactly 0 and so is the gradient on its true-class logit: the sample has
stopped teaching the model. The fraction of such samples tells how far training has collapsed.
"""

from __future__ import annotations

import torch

from priorlab.errors import PriorlabError


def softmax_collapse_mask(logits: torch.Tensor, targets: torch.Tensor,
                          dtype: torch.dtype | None = None) -> torch.Tensor:
    """Boolean ``(N,)``: True where sample ``i`` has collapsed in ``dtype`` (default: the logits').

    A sample collapses when, computed in ``dtype``, ``sum_j exp(z_j - z_max) == 1`` exactly and
    its true class holds the maximum logit: Softmax rounds to exactly one-hot at the true class,
    the cross-entropy is exactly 0 and its gradient on the true-class logit is exactly 0 (the
    other components are below the dtype's resolution relative to 1).
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() != 2:
        got = (f"{logits.dtype} tensor of shape {tuple(logits.shape)}"
               if isinstance(logits, torch.Tensor) else type(logits).__name__)
        raise PriorlabError(f"softmax collapse needs floating-point logits of shape (N, C), got {got}")
    if (not isinstance(targets, torch.Tensor) or targets.is_floating_point() or targets.is_complex()
            or targets.dtype == torch.bool or tuple(targets.shape) != (logits.shape[0],)):
        got = (f"{targets.dtype} tensor of shape {tuple(targets.shape)}"
               if isinstance(targets, torch.Tensor) else type(targets).__name__)
        raise PriorlabError(f"softmax collapse needs integer class-index targets of shape "
                            f"({logits.shape[0]},), got {got}")
    if logits.shape[0] == 0:
        raise PriorlabError("softmax collapse needs at least one sample, got an empty batch")
    num_classes = logits.shape[1]
    if int(targets.min()) < 0 or int(targets.max()) >= num_classes:
        raise PriorlabError(f"targets must lie in [0, {num_classes - 1}], got values in "
                            f"[{int(targets.min())}, {int(targets.max())}]")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise PriorlabError(f"dtype must be a floating-point torch.dtype or None, got {dtype!r}")
    with torch.no_grad():
        z = logits.detach().to(dtype or logits.dtype)
        shifted = z - z.amax(dim=1, keepdim=True)
        sum_exp = torch.exp(shifted).sum(dim=1)
        target_is_max = shifted.gather(1, targets.long().unsqueeze(1)).squeeze(1) == 0
        return (sum_exp == 1) & target_is_max


def softmax_collapse_fraction(logits: torch.Tensor, targets: torch.Tensor,
                              dtype: torch.dtype | None = None) -> float:
    """Fraction of samples in Softmax Collapse in ``dtype`` (see :func:`softmax_collapse_mask`)."""
    return float(softmax_collapse_mask(logits, targets, dtype).float().mean())
