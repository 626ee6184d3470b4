"""Generalised Gaussian (GG) priors on weights: initialisation, shape estimation, BackSlash
penalty and DeepShape reshaping.

Wu et al., "It Takes a Good Model to Train a Good Model: Generalized Gaussian Priors for
Optimized LLMs", arXiv:2506.00486 (building on "BackSlash: Rate Constrained Optimized Training
of Large Language Models", 2025). A zero-mean GG with scale ``a`` and shape ``nu`` has density
``nu / (2 a Gamma(1/nu)) exp(-(|w|/a)^nu)`` and variance ``a^2 Gamma(3/nu) / Gamma(1/nu)``;
``nu = 2`` is Gaussian, ``nu = 1`` Laplacian, ``nu < 1`` peakier and heavier-tailed.

- :func:`gg_init_`: ``w = a sign(u) G^(1/nu)``, ``G ~ Gamma(1/nu, 1)``, ``a`` set so the
  variance matches a target (by default PyTorch's default Linear/Conv init variance).
- :func:`estimate_gg_shape`: moment matching, ``(E|w|)^2 / E[w^2] = Gamma(2/nu)^2 /
  (Gamma(1/nu) Gamma(3/nu))`` solved for ``nu``.
- :func:`backslash_penalty`: the rate term ``lam * sum |w|^nu`` (negative log GG prior up to
  scale), which BackSlash adds to the loss with ``nu`` re-estimated during training.
- :func:`deepshape_`: post-training histogram matching of a tensor to a GG of given shape.
- :func:`prune_smallest_`: magnitude pruning per tensor, to measure how prunable weights are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from scipy.special import gammaincinv

from priorlab.errors import PriorlabError

# The shape estimate is searched (and clipped) in this range: below 0.05 the moment ratio is
# numerically 0, and beyond 20 the GG is indistinguishable from a uniform.
SHAPE_SEARCH = (0.05, 20.0)


def _check_shape(shape) -> float:
    try:
        shape = float(shape)
    except (TypeError, ValueError):
        raise PriorlabError(f"shape must be a positive number, got {shape!r}") from None
    if not math.isfinite(shape) or shape <= 0:
        raise PriorlabError(f"shape must be positive and finite (got {shape}); e.g. 1.0 = Laplace")
    return shape


def gg_scale(std: float, shape: float) -> float:
    """The scale ``a`` of a zero-mean GG of shape ``shape`` whose standard deviation is ``std``."""
    shape = _check_shape(shape)
    return std * math.exp(0.5 * (math.lgamma(1.0 / shape) - math.lgamma(3.0 / shape)))


def gg_moment_ratio(shape: float) -> float:
    """``(E|w|)^2 / E[w^2]`` of a GG: 1/2 for Laplace, 2/pi for Gaussian, -> 3/4 for uniform."""
    shape = _check_shape(shape)
    return math.exp(2 * math.lgamma(2.0 / shape) - math.lgamma(1.0 / shape)
                    - math.lgamma(3.0 / shape))


def _default_std(tensor: torch.Tensor) -> float:
    """Std of PyTorch's default Linear/Conv init, kaiming_uniform(a=sqrt(5)): 1/sqrt(3 fan_in)."""
    if tensor.dim() < 2:
        raise PriorlabError(f"std=None needs a weight with >= 2 dims to read fan_in (got shape "
                            f"{tuple(tensor.shape)}); pass std=... for this tensor")
    fan_in = tensor.shape[1] * math.prod(tensor.shape[2:])
    return 1.0 / math.sqrt(3.0 * fan_in)


def gg_quantile(p: torch.Tensor | np.ndarray, shape: float, std: float = 1.0) -> np.ndarray:
    """Inverse CDF of the zero-mean GG with the given shape and standard deviation."""
    p = np.asarray(p, dtype=np.float64)
    if np.any((p <= 0) | (p >= 1)):
        raise PriorlabError("GG quantiles need probabilities strictly inside (0, 1)")
    scale = gg_scale(std, shape)
    centred = 2.0 * p - 1.0
    return np.sign(centred) * scale * gammaincinv(1.0 / shape, np.abs(centred)) ** (1.0 / shape)


@torch.no_grad()
def gg_init_(tensor: torch.Tensor, shape: float, std: float | None = None, *,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``tensor`` in place with zero-mean GG samples of shape ``shape`` and std ``std``.

    ``w = a sign(u) G^(1/shape)`` with ``G ~ Gamma(1/shape, 1)`` (drawn by inverting the
    regularised incomplete gamma on uniforms from ``generator``, so runs are reproducible) and
    ``a = std sqrt(Gamma(1/shape) / Gamma(3/shape))``. ``std=None`` matches PyTorch's default
    Linear/Conv initialisation, ``1/sqrt(3 fan_in)``.
    """
    shape = _check_shape(shape)
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        got = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise PriorlabError(f"gg_init_ needs a floating-point tensor, got {got}")
    std = _default_std(tensor) if std is None else float(std)
    if not math.isfinite(std) or std < 0:
        raise PriorlabError(f"std must be finite and >= 0, got {std}")
    if tensor.numel() == 0:
        return tensor
    u = torch.rand(tensor.shape, generator=generator, dtype=torch.float64)
    sign = torch.where(torch.rand(tensor.shape, generator=generator) < 0.5, -1.0, 1.0)
    # 1 - u lies in (0, 1]; gammaincinv(k, 1) = inf, so keep it below 1
    level = np.clip(1.0 - u.numpy(), 1e-300, 1.0 - 1e-16)
    magnitude = gammaincinv(1.0 / shape, level) ** (1.0 / shape)
    values = sign.double() * gg_scale(std, shape) * torch.from_numpy(magnitude)
    tensor.copy_(values.to(dtype=tensor.dtype, device=tensor.device))
    return tensor


def _flat(weights) -> torch.Tensor:
    if isinstance(weights, torch.Tensor):
        weights = [weights]
    tensors = [w.detach().reshape(-1).double().cpu() for w in weights]
    if not tensors:
        raise PriorlabError("no weights given to estimate a GG shape from")
    return torch.cat(tensors)


def estimate_gg_shape(weights: torch.Tensor | Iterable[torch.Tensor]) -> float:
    """The GG shape ``nu`` of ``weights`` (one tensor, or several pooled) by moment matching.

    Solves ``(E|w - m|)^2 / E[(w - m)^2] = Gamma(2/nu)^2 / (Gamma(1/nu) Gamma(3/nu))`` for
    ``nu`` (the ratio rises monotonically from 0 to 3/4) by bisection in log ``nu`` over
    ``SHAPE_SEARCH``; ratios outside the range give its ends.
    """
    w = _flat(weights)
    if w.numel() < 2:
        raise PriorlabError(f"need at least 2 weights to estimate a GG shape, got {w.numel()}")
    if not torch.isfinite(w).all():
        raise PriorlabError("weights contain NaN or inf; cannot estimate a GG shape")
    w = w - w.mean()
    second = float((w * w).mean())
    if second == 0.0:
        raise PriorlabError("all weights are equal; a GG shape is undefined for a point mass")
    ratio = float(w.abs().mean()) ** 2 / second
    low, high = math.log(SHAPE_SEARCH[0]), math.log(SHAPE_SEARCH[1])
    if ratio <= gg_moment_ratio(SHAPE_SEARCH[0]):
        return SHAPE_SEARCH[0]
    if ratio >= gg_moment_ratio(SHAPE_SEARCH[1]):
        return SHAPE_SEARCH[1]
    for _ in range(60):
        mid = 0.5 * (low + high)
        if gg_moment_ratio(math.exp(mid)) < ratio:
            low = mid
        else:
            high = mid
    return math.exp(0.5 * (low + high))


def backslash_penalty(params: Sequence[torch.Tensor], lam: float,
                      nu: float | Sequence[float], *, eps: float = 1e-8) -> torch.Tensor:
    """BackSlash's rate term ``lam * sum_i sum |w_i|^nu_i`` (one ``nu`` for all, or one each).

    ``|w|`` is floored at ``eps`` inside the power so the gradient stays finite for ``nu < 1``
    (exact zeros get zero gradient). ``lam = 0`` returns an exact 0 without touching the weights.
    """
    params = list(params)
    if not params:
        raise PriorlabError("backslash_penalty got no parameters")
    lam = float(lam)
    if not math.isfinite(lam) or lam < 0:
        raise PriorlabError(f"lam must be finite and >= 0, got {lam}")
    nus = [nu] * len(params) if isinstance(nu, (int, float)) else list(nu)
    if len(nus) != len(params):
        raise PriorlabError(f"got {len(nus)} shapes nu for {len(params)} parameters; pass one "
                            "float or one per parameter")
    nus = [_check_shape(n) for n in nus]
    if lam == 0.0:
        return torch.zeros((), dtype=params[0].dtype, device=params[0].device)
    total = sum((p.abs().clamp_min(eps) ** n).sum() for p, n in zip(params, nus))
    return lam * total


@torch.no_grad()
def deepshape_(tensor: torch.Tensor, shape: float, *, strength: float = 1.0) -> torch.Tensor:
    """DeepShape: reshape ``tensor``'s value histogram towards a GG of shape ``shape``, in place.

    Each value is replaced by the GG quantile of its rank (mid-rank probabilities), with the
    tensor's own mean and standard deviation kept, so the ordering of weights is preserved
    and only their spacing changes. ``strength`` in [0, 1] blends old and matched values
    (0 leaves the tensor unchanged).
    """
    shape = _check_shape(shape)
    strength = float(strength)
    if not 0.0 <= strength <= 1.0:
        raise PriorlabError(f"strength must lie in [0, 1], got {strength}")
    if not tensor.is_floating_point() or tensor.numel() < 2:
        raise PriorlabError("deepshape_ needs a floating-point tensor with at least 2 values")
    if not torch.isfinite(tensor).all():
        raise PriorlabError("tensor contains NaN or inf; cannot reshape its histogram")
    if strength == 0.0:
        return tensor
    flat = tensor.detach().reshape(-1).double().cpu()
    mean, std = float(flat.mean()), float(flat.std(unbiased=False))
    n = flat.numel()
    targets = torch.from_numpy(gg_quantile((np.arange(n) + 0.5) / n, shape, std)) + mean
    matched = torch.empty_like(flat)
    matched[torch.argsort(flat, stable=True)] = targets
    blended = (1.0 - strength) * flat + strength * matched
    tensor.copy_(blended.reshape(tensor.shape).to(dtype=tensor.dtype, device=tensor.device))
    return tensor


def prune_smallest_(tensors: Iterable[torch.Tensor], fraction: float) -> int:
    """Zero the ``fraction`` smallest-magnitude entries of each tensor in place; return how many."""
    fraction = float(fraction)
    if not 0.0 <= fraction <= 1.0:
        raise PriorlabError(f"fraction must lie in [0, 1], got {fraction}")
    zeroed = 0
    with torch.no_grad():
        for t in tensors:
            k = round(fraction * t.numel())
            if k == 0:
                continue
            mask = torch.zeros(t.numel(), dtype=torch.bool, device=t.device)
            mask[torch.argsort(t.detach().abs().reshape(-1), stable=True)[:k]] = True
            t.masked_fill_(mask.view(t.shape), 0.0)
            zeroed += k
    return zeroed
