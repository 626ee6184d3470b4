"""Generalised Gaussian (GG) priors on weights: initialisation, shape estimation, the BackSlash
rate-constrained step, DeepShape reshaping and magnitude pruning.

Wu et al., "It Takes a Good Model to Train a Good Model: Generalized Gaussian Priors for
Optimized LLMs", arXiv:2506.00486, and its predecessor "BackSlash: Rate Constrained Optimized
Training of Large Language Models", arXiv:2504.16968. Official code: the gg_prior space, read
from the co-author's copy phuang1024/DBS, folder gg_prior/, commit 981a0308. A zero-mean GG with
scale ``a`` and shape ``nu`` has density ``nu / (2 a Gamma(1/nu)) exp(-(|w|/a)^nu)`` and
variance ``a^2 Gamma(3/nu) / Gamma(1/nu)``; ``nu = 2`` is Gaussian, ``nu = 1`` Laplacian.

- :func:`gg_init_` / :func:`gg_init_model_`: GG samples with variance ``xi / fan_out``
  (official gg_init.py: ``xi / shape[0]`` for 2-D weights, shape 2, xi 2, biases zeroed).
- :func:`lookup_gg_shape`: the official estimator, one shape for all weights pooled, the
  nearest entry of a table over ``[0.1, 3]`` (step 0.01) of
  ``rho(nu) = Gamma(1/nu) Gamma(3/nu) / Gamma(2/nu)^2`` to ``n sum w^2 / (sum |w|)^2``.
- :func:`backslash_step_`: the official BackSlash update, applied outside the optimiser after
  each batch, ``w -= rate nu / N sign(w) (|w| + clip)^(nu - 1)`` (N = number of weights).
- :func:`backslash_penalty`: the same rate term as a loss, ``lam sum (|w| + clip)^nu``; with
  ``lam = rate / N`` and ``clip = 1`` its gradient is the official step (a variant for use
  through an optimiser, not the official rule).
- :func:`estimate_gg_shape`: moment matching by bisection (centred, continuous; for reports).
- :func:`deepshape_`: histogram matching of a tensor to a GG of given shape.
- :func:`prune_smallest_`: magnitude pruning per tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from scipy.special import gammaincinv
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_tensor, describe

# The moment-matching estimate is searched (and clipped) in this range: below 0.05 the moment
# ratio is numerically 0, and beyond 20 the GG is indistinguishable from a uniform.
SHAPE_SEARCH = (0.05, 20.0)
# The official BackSlash shape table (gg_prior/data/gamma_table.pt): 0.10, 0.11, ..., 3.00.
SHAPE_TABLE = tuple(round(0.1 + 0.01 * i, 2) for i in range(291))
# Official BackSlash constants (backslash.py): the rate ``rdo`` and the shift ``clip``.
BACKSLASH_RATE = 2e3
BACKSLASH_CLIP = 1.0


def _check_shape(shape, name: str = "shape") -> float:
    if isinstance(shape, (bool, str, bytes)) or shape is None:
        raise PriorlabError(f"{name} must be a positive number, got {shape!r}")
    try:
        shape = float(shape)
    except (TypeError, ValueError, RuntimeError):
        raise PriorlabError(f"{name} must be a positive number, got {shape!r}") from None
    if not math.isfinite(shape) or shape <= 0:
        raise PriorlabError(f"{name} must be positive and finite (got {shape}); e.g. 1.0 = Laplace")
    return shape


def _shapes(nu, count: int, name: str = "nu") -> list[float]:
    """One shape per tensor from a number, a 0-d array/tensor, or one value per tensor."""
    if isinstance(nu, torch.Tensor):
        nu = nu.detach().cpu().numpy()
    if isinstance(nu, (bool, str, bytes)) or nu is None:
        raise PriorlabError(f"{name} must be a positive number or one per tensor, got {nu!r}")
    try:
        values = np.asarray(nu, dtype=np.float64)
    except (TypeError, ValueError):
        raise PriorlabError(f"{name} must be a positive number or one per tensor, "
                            f"got {nu!r}") from None
    if values.ndim == 0:
        return [_check_shape(values.item(), name)] * count
    if values.ndim > 1 or values.size != count:
        raise PriorlabError(f"got {name} of shape {values.shape} for {count} tensor(s); pass one "
                            "number or one per tensor")
    return [_check_shape(v, name) for v in values.tolist()]


def _tensors(params, who: str, name: str = "params") -> list[torch.Tensor]:
    """A tensor or an iterable of tensors as a list; a bare tensor is ONE tensor, not its rows."""
    if isinstance(params, torch.Tensor):
        params = [params]
    elif not isinstance(params, Iterable) or isinstance(params, (str, bytes)):
        raise PriorlabError(f"{who}: {name} must be a tensor or a list of tensors, got "
                            f"{describe(params)}")
    params = list(params)
    if not params:
        raise PriorlabError(f"{who}: {name} holds no tensors")
    for i, t in enumerate(params):
        check_tensor(t, f"{name}[{i}]", who=who, dtype="float")
    return params


def _check_number(value, name: str, *, positive: bool = False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise PriorlabError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise PriorlabError(f"{name} must be finite and {bound}, got {value}")
    return value


def gg_scale(std: float, shape: float) -> float:
    """The scale ``a`` of a zero-mean GG of shape ``shape`` whose standard deviation is ``std``."""
    shape = _check_shape(shape)
    return std * math.exp(0.5 * (math.lgamma(1.0 / shape) - math.lgamma(3.0 / shape)))


def gg_moment_ratio(shape: float) -> float:
    """``(E|w|)^2 / E[w^2]`` of a GG: 1/2 for Laplace, 2/pi for Gaussian, -> 3/4 for uniform."""
    shape = _check_shape(shape)
    return math.exp(2 * math.lgamma(2.0 / shape) - math.lgamma(1.0 / shape)
                    - math.lgamma(3.0 / shape))


_RHO_TABLE = torch.tensor([1.0 / gg_moment_ratio(nu) for nu in SHAPE_TABLE], dtype=torch.float64)


def gg_quantile(p: torch.Tensor | np.ndarray, shape: float, std: float = 1.0) -> np.ndarray:
    """Inverse CDF of the zero-mean GG with the given shape and standard deviation."""
    p = np.asarray(p, dtype=np.float64)
    if np.any((p <= 0) | (p >= 1)):
        raise PriorlabError("GG quantiles need probabilities strictly inside (0, 1)")
    scale = gg_scale(std, shape)
    centred = 2.0 * p - 1.0
    return np.sign(centred) * scale * gammaincinv(1.0 / shape, np.abs(centred)) ** (1.0 / shape)


def _fan_out(tensor: torch.Tensor) -> int:
    """``shape[0]`` times the receptive field: the official ``shape[0]`` for a 2-D weight."""
    if tensor.dim() < 2:
        raise PriorlabError(f"std=None needs a weight with >= 2 dims to read shape[0] (got shape "
                            f"{tuple(tensor.shape)}); pass std=... for this tensor")
    return tensor.shape[0] * math.prod(tensor.shape[2:])


@torch.no_grad()
def gg_init_(tensor: torch.Tensor, shape: float = 2.0, std: float | None = None, *,
             xi: float = 2.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``tensor`` in place with zero-mean GG samples of shape ``shape``.

    ``std=None`` gives the official variance ``xi / shape[0]`` (gg_init.py; ``shape[0]`` of an
    ``nn.Linear`` weight is its fan-out; a conv kernel's receptive field multiplies it here);
    ``xi`` is 2 for ReLU, 1 for sigmoid or none, ``2 / (1 + k^2)`` for LeakyReLU(k). Draws are
    ``a sign(u) G^(1/shape)``, ``G ~ Gamma(1/shape, 1)``, by inverting the regularised incomplete
    gamma on uniforms from ``generator`` so runs are reproducible.
    """
    shape = _check_shape(shape)
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        got = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise PriorlabError(f"gg_init_ needs a floating-point tensor, got {got}")
    xi = _check_number(xi, "xi", positive=True)
    std = math.sqrt(xi / _fan_out(tensor)) if std is None else _check_number(std, "std")
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


@torch.no_grad()
def gg_init_model_(model: nn.Module, shape: float = 2.0, *, xi: float = 2.0,
                   generator: torch.Generator | None = None) -> nn.Module:
    """The official ``gg_init(model, shape, xi)``: every weight with >= 2 dims from
    :func:`gg_init_` (variance ``xi / fan_out``), 1-D ``bias`` parameters zeroed and other 1-D
    ``weight`` parameters (norm scales) set to 1; anything else is left as it is."""
    if not isinstance(model, nn.Module):
        raise PriorlabError(f"gg_init_model_ needs an nn.Module, got {type(model).__name__}")
    for name, param in model.named_parameters():
        if param.dim() >= 2:
            gg_init_(param, shape, xi=xi, generator=generator)
        elif "weight" in name:
            param.fill_(1.0)
        elif "bias" in name:
            param.zero_()
    return model


def _flat(weights) -> torch.Tensor:
    tensors = _tensors(weights, "estimate_gg_shape", "weights")
    return torch.cat([w.detach().reshape(-1).double().cpu() for w in tensors])


def lookup_gg_shape(weights: torch.Tensor | Iterable[torch.Tensor]) -> float:
    """The official BackSlash shape estimate of ``weights`` (one tensor, or several pooled).

    ``rho = n sum w^2 / (sum |w|)^2`` (not centred, as the official) is matched to the nearest
    ``rho(nu) = Gamma(1/nu) Gamma(3/nu) / Gamma(2/nu)^2`` over ``SHAPE_TABLE`` (0.1 ... 3, step
    0.01); shapes outside the table give its ends.
    """
    tensors = _tensors(weights, "lookup_gg_shape", "weights")
    n = sum(t.numel() for t in tensors)
    squares = sum(float(t.detach().double().pow(2).sum()) for t in tensors)
    absolute = sum(float(t.detach().double().abs().sum()) for t in tensors)
    if not (math.isfinite(squares) and math.isfinite(absolute)):
        raise PriorlabError("weights contain NaN or inf; cannot estimate a GG shape")
    if absolute == 0.0:
        raise PriorlabError("all weights are zero; a GG shape is undefined for a point mass")
    rho = n * squares / absolute ** 2
    return SHAPE_TABLE[int(torch.argmin((_RHO_TABLE - rho).abs()))]


def estimate_gg_shape(weights: torch.Tensor | Iterable[torch.Tensor]) -> float:
    """The GG shape ``nu`` of ``weights`` (one tensor, or several pooled) by moment matching.

    Solves ``(E|w - m|)^2 / E[(w - m)^2] = Gamma(2/nu)^2 / (Gamma(1/nu) Gamma(3/nu))`` for
    ``nu`` (the ratio rises monotonically from 0 to 3/4) by bisection in log ``nu`` over
    ``SHAPE_SEARCH``; ratios outside the range give its ends. Unlike :func:`lookup_gg_shape` it
    centres the weights and is not limited to a table.
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


@torch.no_grad()
def backslash_step_(params: torch.Tensor | Iterable[torch.Tensor], rate: float = BACKSLASH_RATE,
                    nu=None, *, clip: float = BACKSLASH_CLIP) -> float:
    """One official BackSlash update, in place: ``w -= rate nu / N sign(w) (|w| + clip)^(nu-1)``.

    ``N`` is the number of weights in ``params`` (all of them pooled); ``nu=None`` fits one shape
    to them all with :func:`lookup_gg_shape` first, as the official code does after every batch;
    a number fixes it (``nu = 1`` is a plain L1 sign step of ``rate / N``). Exact zeros stay
    zero (``sign(0) = 0``). Returns the shape used. ``rate`` is calibrated to ``N``: the official
    2e3 was set for LLMs (N ~ 1e8), where one step moves a weight by ~2e-5.
    """
    tensors = _tensors(params, "backslash_step_", "params")
    rate = _check_number(rate, "rate")
    clip = _check_number(clip, "clip", positive=True)  # clip 0 makes the step infinite at w=0
    shape = lookup_gg_shape(tensors) if nu is None else _check_shape(nu, "nu")
    if rate == 0.0:
        return shape
    factor = rate * shape / sum(t.numel() for t in tensors)
    for w in tensors:
        w.sub_(factor * torch.sign(w) * (w.abs() + clip).pow(shape - 1.0))
    return shape


def backslash_penalty(params: torch.Tensor | Iterable[torch.Tensor], lam: float, nu, *,
                      clip: float = 0.0, eps: float = 1e-8) -> torch.Tensor:
    """The rate term as a loss, ``lam * sum_i sum (|w_i| + clip)^nu_i`` (one ``nu`` or one each).

    ``nu`` is a number, a 0-d array/tensor, or one value per tensor. With ``lam = rate / N`` and
    ``clip = 1`` one gradient-descent step of size 1 on it is :func:`backslash_step_`; through an
    adaptive optimiser (Adam) it is a different rule (an earlier priorlab variant). With
    ``clip = 0``, ``|w|`` is floored at ``eps`` so the gradient stays finite for ``nu < 1``.
    ``lam = 0`` returns an exact 0 without touching the weights.
    """
    who = "backslash_penalty"
    params = _tensors(params, who, "params")
    lam = check_number(lam, "lam", who=who, low=0)
    clip = check_number(clip, "clip", who=who, low=0)
    eps = check_number(eps, "eps", who=who, low=0, low_open=True)
    nus = _shapes(nu, len(params))
    if lam == 0.0:
        return torch.zeros((), dtype=params[0].dtype, device=params[0].device)
    if clip == 0.0:
        total = sum((p.abs().clamp_min(eps) ** n).sum() for p, n in zip(params, nus))
    else:
        total = sum(((p.abs() + clip) ** n).sum() for p, n in zip(params, nus))
    penalty = lam * total
    if not bool(torch.isfinite(penalty)):  # one check on the sum; find the cause only on failure
        for i, p in enumerate(params):
            check_tensor(p, f"params[{i}]", who=who, finite=True,
                         hint="the model diverged; lower the learning rate or check the loss")
        largest = max(float(p.abs().max()) for p in params if p.numel())
        raise PriorlabError(f"{who}: the penalty of params overflows "
                            f"{str(penalty.dtype).removeprefix('torch.')} (largest |weight| "
                            f"{largest:.3g}, nu {max(nus):g}, lam {lam:g}); use float64 or smaller "
                            "weights")
    return penalty


@torch.no_grad()
def deepshape_(tensor: torch.Tensor, shape: float, *, strength: float = 1.0) -> torch.Tensor:
    """DeepShape: reshape ``tensor``'s value histogram towards a GG of shape ``shape``, in place.

    Each value is replaced by the GG quantile of its rank (mid-rank probabilities), with the
    tensor's own mean and standard deviation kept, so the ordering of weights is preserved
    and only their spacing changes. ``strength`` in [0, 1] blends old and matched values
    (0 leaves the tensor unchanged).
    """
    shape = _check_shape(shape)
    strength = _check_number(strength, "strength")
    if strength > 1.0:
        raise PriorlabError(f"strength must lie in [0, 1], got {strength}")
    if (not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point()
            or tensor.numel() < 2):
        raise PriorlabError("deepshape_ needs one floating-point tensor with at least 2 values")
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


def prune_smallest_(tensors: torch.Tensor | Iterable[torch.Tensor], fraction: float) -> int:
    """Zero the ``fraction`` smallest-magnitude entries of each tensor in place; return how many.

    Per tensor: each loses ``round(fraction * numel)`` entries, ranked within that tensor (ties
    by position). A bare tensor is one tensor, ranked as a whole (not row by row).
    """
    tensors = _tensors(tensors, "prune_smallest_", "tensors")
    fraction = _check_number(fraction, "fraction")
    if fraction > 1.0:
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
