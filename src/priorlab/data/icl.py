"""In-context linear regression: prompts and the reference learners a transformer is compared to.

Akyürek, Schuurmans, Andreas, Ma & Zhou, "What learning algorithm is in-context learning?
Investigations with linear models", ICLR 2023, arXiv:2211.15661 (official code:
google-research/google-research, ``incontext/incontext/sampler_lib.py`` and ``algos.py``).

A prompt holds ``n`` examples ``(x_i, y_i)`` of one random linear function::

    w ~ N(0, weight_std^2 I_d),  x_i ~ N(0, I_d),  y_i = w . x_i + noise_std * eps_i

and a learner predicts each ``y_i`` from ``x_i`` and the ``i`` examples before it. The references
are the classical learners fitted to that prefix: ordinary least squares (the minimum-norm
solution while ``i < d``), ridge regression ``(X^T X + lam I)^-1 X^T y`` (the Bayes posterior
mean when ``lam = noise_std^2 / weight_std^2``) and ``k`` steps of gradient descent from ``w = 0``.
Their distance to a learner is the paper's *squared prediction difference* (SPD).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from priorlab.errors import PriorlabError


@dataclass
class ICLBatch:
    """``xs`` (B, n, d), ``ys`` (B, n) and the true weights ``weights`` (B, d) of each prompt."""

    xs: torch.Tensor
    ys: torch.Tensor
    weights: torch.Tensor


def _check_count(value, name: str, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise PriorlabError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_scale(value, name: str, allow_zero: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise PriorlabError(f"{name} must be a finite number {bound}, got {value!r}")


def icl_regression_batch(batch_size: int, num_examples: int, dim: int, noise_std: float = 0.0,
                         weight_std: float = 1.0, generator: torch.Generator | None = None,
                         dtype: torch.dtype = torch.float32) -> ICLBatch:
    """``batch_size`` prompts of ``num_examples`` noisy linear examples in ``dim`` dimensions.

    The official sampler's defaults: standard normal inputs and weights, no noise.
    """
    _check_count(batch_size, "batch_size")
    _check_count(num_examples, "num_examples")
    _check_count(dim, "dim")
    _check_scale(noise_std, "noise_std", allow_zero=True)
    _check_scale(weight_std, "weight_std", allow_zero=False)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise PriorlabError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    weights = weight_std * torch.randn(batch_size, dim, generator=generator, dtype=dtype)
    xs = torch.randn(batch_size, num_examples, dim, generator=generator, dtype=dtype)
    ys = torch.einsum("bnd,bd->bn", xs, weights)
    if noise_std > 0:
        noise = torch.randn(batch_size, num_examples, generator=generator, dtype=dtype)
        ys = ys + noise_std * noise
    return ICLBatch(xs=xs, ys=ys, weights=weights)


def _check_context(x_context, y_context, x_query) -> None:
    for name, t, ndim, hint in (("x_context", x_context, 3, "(B, k, d)"),
                                ("y_context", y_context, 2, "(B, k)"),
                                ("x_query", x_query, 2, "(B, d)")):
        if not isinstance(t, torch.Tensor) or t.ndim != ndim or not t.is_floating_point():
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise PriorlabError(f"{name} must be a floating-point tensor of shape {hint}, "
                                f"got {got}")
        if not bool(torch.isfinite(t).all()):
            raise PriorlabError(f"{name} contains NaN or infinite values")
    B, k, d = x_context.shape
    if y_context.shape != (B, k) or x_query.shape != (B, d):
        raise PriorlabError(f"shapes do not match: x_context {tuple(x_context.shape)} needs "
                            f"y_context {(B, k)} and x_query {(B, d)}, got "
                            f"{tuple(y_context.shape)} and {tuple(x_query.shape)}")


def _moments(x_context, y_context):
    xt = x_context.transpose(1, 2)
    return xt @ x_context, (xt @ y_context.unsqueeze(-1)).squeeze(-1)


def ols_predict(x_context: torch.Tensor, y_context: torch.Tensor,
                x_query: torch.Tensor) -> torch.Tensor:
    """Least squares fitted to each prompt's context (minimum-norm when under-determined)."""
    _check_context(x_context, y_context, x_query)
    w = (torch.linalg.pinv(x_context) @ y_context.unsqueeze(-1)).squeeze(-1)
    return (w * x_query).sum(-1)


def ridge_predict(x_context: torch.Tensor, y_context: torch.Tensor, x_query: torch.Tensor,
                  lam: float) -> torch.Tensor:
    """Ridge regression ``w = (X^T X + lam I)^-1 X^T y`` (sklearn ``Ridge(alpha=lam)``, no bias)."""
    _check_context(x_context, y_context, x_query)
    _check_scale(lam, "lam", allow_zero=False)
    gram, xty = _moments(x_context, y_context)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    w = torch.linalg.solve(gram + lam * eye, xty)
    return (w * x_query).sum(-1)


def gd_predict(x_context: torch.Tensor, y_context: torch.Tensor, x_query: torch.Tensor,
               steps: int = 1, lr: float | None = None) -> torch.Tensor:
    """``steps`` of full-batch gradient descent on ``0.5 * ||X w - y||^2`` from ``w = 0``.

    ``lr=None`` takes ``1 / (k + d + 1)`` for a context of ``k`` examples: the step size that
    minimises the expected error of one step for standard normal inputs (then
    ``E[X^T X X^T X] = k (k + d + 1) I``). Many steps need ``lr < 2 / lambda_max(X^T X)``.
    """
    _check_context(x_context, y_context, x_query)
    _check_count(steps, "steps")
    k, d = x_context.shape[1], x_context.shape[2]
    if lr is None:
        lr = 1.0 / (k + d + 1)
    _check_scale(lr, "lr", allow_zero=False)
    gram, xty = _moments(x_context, y_context)
    w = torch.zeros_like(xty)
    for _ in range(steps):
        w = w - lr * ((gram @ w.unsqueeze(-1)).squeeze(-1) - xty)
    return (w * x_query).sum(-1)


def prefix_predictions(predict: Callable[..., torch.Tensor], xs: torch.Tensor, ys: torch.Tensor,
                       **kwargs) -> torch.Tensor:
    """``(B, n)`` predictions of each ``y_i`` by ``predict`` fitted to the ``i`` earlier examples.

    Position 0 has no context: every reference predicts ``0``, the prior mean.
    """
    if not isinstance(xs, torch.Tensor) or xs.ndim != 3 or not isinstance(ys, torch.Tensor) \
            or ys.shape != xs.shape[:2]:
        raise PriorlabError("prefix_predictions needs xs of shape (B, n, d) and ys of shape (B, n)")
    out = torch.zeros_like(ys)
    for i in range(1, xs.shape[1]):
        out[:, i] = predict(xs[:, :i], ys[:, :i], xs[:, i], **kwargs)
    return out


def squared_prediction_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The paper's SPD: ``mean over prompts of (a - b)^2`` at each position, shape ``(n,)``."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape \
            or a.ndim != 2:
        raise PriorlabError("squared_prediction_difference needs two (B, n) tensors of one shape")
    return (a - b).pow(2).mean(dim=0)
