"""l_inf evasion attacks on classifiers whose inputs live in [0, 1].

- FGSM: Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples"
  (arXiv:1412.6572): ``x' = clip(x + eps * sign(grad_x loss))``.
- PGD: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks"
  (arXiv:1706.06083): optional uniform random start in the eps-ball, then ``steps`` signed
  gradient steps of size ``alpha``, each projected back onto the eps-ball and [0, 1].

Both maximise the cross-entropy of ``model(x)`` against the true labels. For a stochastic
defence, ``eot`` averages the gradient over that many forward passes (expectation over
transformation, Athalye et al. arXiv:1802.00420); for a non-differentiable layer, pass a model
whose backward replaces only that layer by a differentiable approximation (BPDA, same paper).
``strongest_per_example`` combines several attacks: per example, it keeps the candidate input
with the highest expected loss, as an attacker running all of them would.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError


def _check_inputs(model, x: torch.Tensor, y: torch.Tensor) -> None:
    if not callable(model):
        raise PriorlabError(f"attack model must be callable (an nn.Module), got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise PriorlabError("attack inputs x must be a floating-point tensor of images in [0, 1]")
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.ndim != 1 or len(y) != len(x):
        raise PriorlabError(f"attack labels y must be a 1-D integer tensor with one label per input "
                            f"({len(x)}), got {tuple(getattr(y, 'shape', ()))}")
    if not torch.isfinite(x).all():
        raise PriorlabError("attack inputs contain NaN or inf; clean the batch first")
    if x.min() < 0 or x.max() > 1:
        raise PriorlabError(f"attack inputs must lie in [0, 1], got range [{float(x.min()):.3g}, "
                            f"{float(x.max()):.3g}]; rescale the images first")


def _check_positive(name: str, value, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise PriorlabError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _input_gradient(model, x: torch.Tensor, y: torch.Tensor, eot: int) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    loss = sum(F.cross_entropy(model(x), y, reduction="sum") for _ in range(eot)) / eot
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
         eot: int = 1) -> torch.Tensor:
    """One signed-gradient step of size ``eps`` on the cross-entropy, clamped to [0, 1]."""
    _check_inputs(model, x, y)
    eps = _check_positive("FGSM eps", eps, allow_zero=True)
    _check_eot(eot)
    grad = _input_gradient(model, x, y, eot)
    return (x + eps * grad.sign()).clamp(0.0, 1.0).detach()


def _check_eot(eot) -> None:
    if isinstance(eot, bool) or not isinstance(eot, int) or eot < 1:
        raise PriorlabError(f"eot (gradient samples per step) must be an integer >= 1, got {eot!r}")


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
        steps: int, random_start: bool = True, generator: torch.Generator | None = None, *,
        eot: int = 1) -> torch.Tensor:
    """Projected gradient ascent in the l_inf ball of radius ``eps`` around ``x``, within [0, 1]."""
    _check_inputs(model, x, y)
    eps = _check_positive("PGD eps", eps, allow_zero=True)
    alpha = _check_positive("PGD step size alpha", alpha)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise PriorlabError(f"PGD steps must be an integer >= 1, got {steps!r}")
    _check_eot(eot)
    x = x.detach()
    x_adv = x.clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1
        x_adv = (x + eps * noise.to(x.device)).clamp(0.0, 1.0)
    for _ in range(steps):
        grad = _input_gradient(model, x_adv, y, eot)
        x_adv = x_adv + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv.detach()


@torch.no_grad()
def strongest_per_example(model: nn.Module, candidates: Sequence[torch.Tensor], y: torch.Tensor, *,
                          eot: int = 1) -> torch.Tensor:
    """Per example, the candidate (adversarial) input whose cross-entropy under ``model``,
    averaged over ``eot`` forward passes, is highest. The attacker decides with its own forward
    passes, so a stochastic defence evaluated afterwards draws fresh randomness."""
    if isinstance(candidates, torch.Tensor) or not isinstance(candidates, Sequence) or not candidates:
        raise PriorlabError("candidates must be a non-empty list of input tensors, one per attack")
    for c in candidates:
        _check_inputs(model, c, y)
        if c.shape != candidates[0].shape:
            raise PriorlabError(f"candidates must share one shape, got {tuple(c.shape)} and "
                                f"{tuple(candidates[0].shape)}")
    _check_eot(eot)
    losses = torch.stack([sum(F.cross_entropy(model(c), y, reduction="none") for _ in range(eot))
                          for c in candidates])
    best = losses.argmax(0)
    return torch.stack(list(candidates))[best, torch.arange(len(y))]
