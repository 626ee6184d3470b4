"""Proximal-matching loss and its annealed width (LPN, Fang et al., ICLR 2024, arXiv:2310.14344).

Paper eq. 3.5: ``L_PM(f(y), x; gamma) = 1 - exp(-||f(y) - x||^2 / gamma^2)``, averaged over the
batch. As ``gamma -> 0`` it approaches a 0/1 loss whose minimiser is the posterior *mode*, so a
denoiser trained with it converges to the MAP estimator ``prox_{-sigma^2 log p}`` (Thm. 3.3),
where the L2 loss gives the posterior mean and L1 the posterior median. ``gamma`` is annealed
from large to small in stages (official trainer: ``gamma_min * 2 ** (stages - 1 - stage)``).
"""

from __future__ import annotations

import torch

from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_tensor


def proximal_matching_loss(prediction: torch.Tensor, target: torch.Tensor, gamma: float, *,
                           mean_over_dims: bool = False) -> torch.Tensor:
    """``mean_i [1 - exp(-||prediction_i - target_i||^2 / gamma^2)]`` over the batch (dim 0).

    ``mean_over_dims=True`` uses the mean instead of the sum of squares over the non-batch
    dimensions (a later version of the official code does this for images, so that ``gamma``
    is a per-pixel scale).
    """
    who = "proximal_matching_loss"
    check_tensor(prediction, "prediction", who=who, min_ndim=1, dtype="float", non_empty=True,
                 finite=True)
    check_tensor(target, "target", who=who, shape=tuple(prediction.shape), dtype="float",
                 finite=True)
    gamma = check_number(gamma, "gamma", who=who, low=0, low_open=True,
                         hint="gamma is the width of the loss, e.g. 0.5 annealed to 0.1")
    if not isinstance(mean_over_dims, bool):
        raise PriorlabError(f"{who}: mean_over_dims must be True or False, got "
                            f"{type(mean_over_dims).__name__}")
    squared = (prediction - target).pow(2).reshape(prediction.shape[0], -1)
    distance2 = squared.mean(1) if mean_over_dims else squared.sum(1)
    return (1 - torch.exp(-distance2 / gamma ** 2)).mean()


def annealed_gamma(step: int, num_steps: int, gamma_max: float, gamma_min: float,
                   num_stages: int) -> float:
    """Piecewise-constant ``gamma``: ``num_stages`` equal stages spaced geometrically from
    ``gamma_max`` (first stage) to ``gamma_min`` (last stage; steps past the end stay there)."""
    who = "annealed_gamma"
    step = check_number(step, "step", who=who, low=0, integer=True)
    num_steps = check_number(num_steps, "num_steps", who=who, low=1, integer=True)
    gamma_min = check_number(gamma_min, "gamma_min", who=who, low=0, low_open=True)
    gamma_max = check_number(gamma_max, "gamma_max", who=who, low=gamma_min,
                             hint="gamma is annealed from gamma_max down to gamma_min")
    num_stages = check_number(num_stages, "num_stages", who=who, low=1, high=num_steps,
                              integer=True)
    stage = min(step * num_stages // num_steps, num_stages - 1)
    if num_stages == 1:
        return gamma_min
    return gamma_max * (gamma_min / gamma_max) ** (stage / (num_stages - 1))
