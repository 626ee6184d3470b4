"""Regularisers built from an adaptive solver's own cost heuristics (pure functions).

Global (Pal et al., "Opening the Blackbox: Accelerating Neural Differential Equations by
Regularizing Internal Solver Heuristics", ICML 2021, arXiv 2105.03918): the loss gains
``lambda * mean_k(E_k dt_k)`` over the accepted steps k of the forward solve, with E_k the local
error estimate (``type: error_est``) or the stiffness estimate (``stiff_est``).

Local (Pal et al., "Locally Regularized Neural Differential Equations", ICML 2023, arXiv
2303.02262): the loss gains ``lambda * E dt`` of ONE extra step taken at a time drawn uniformly
in the integration interval (the "unbiased" sampler), so the regulariser needs no access to the
solve's internals and works with any adjoint.

Inputs are lists/tensors of per-step estimates and step sizes (see
:class:`priorlab.nn.neural_ode.SolveStats`); outputs are differentiable scalars.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import torch

from priorlab.errors import PriorlabError, did_you_mean
from priorlab.validation import check_number, check_tensor, describe

HEURISTICS = ("error", "stiffness")


def _as_vector(values, name: str, who: str, dtype=("float",)) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        vector = values.reshape(-1)
    else:
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise PriorlabError(f"{who}: {name} must be a tensor or a list of per-step values, "
                                f"got {describe(values)}")
        values = list(values)
        if not all(isinstance(v, numbers.Real) or (isinstance(v, torch.Tensor) and v.numel() == 1)
                   for v in values):
            raise PriorlabError(f"{who}: {name} must hold one number or one-element tensor per step")
        if not values:
            raise PriorlabError(f"{who}: {name} is empty (a solve takes at least one step)")
        vector = torch.stack([v.reshape(()) if isinstance(v, torch.Tensor) else torch.tensor(float(v))
                              for v in values]).reshape(-1)
    if vector.numel() == 0:
        raise PriorlabError(f"{who}: {name} is empty (a solve takes at least one step)")
    check_tensor(vector, name, who=who, dtype=dtype)
    if not torch.isfinite(vector.detach()).all():
        raise PriorlabError(f"{who}: {name} holds NaN or infinite values")
    return vector


def global_solver_penalty(estimates, dts) -> torch.Tensor:
    """``mean_k(estimates[k] * dts[k])`` over a solve's accepted steps (RegNeuralDE's
    ``mean(sv.saveval)`` with ``func = EEst * dt``)."""
    who = "global_solver_penalty"
    estimates = _as_vector(estimates, "estimates", who)
    dts = _as_vector(dts, "dts", who, dtype=("float", "integer")).to(estimates)
    if estimates.shape != dts.shape:
        raise PriorlabError(f"{who}: {estimates.numel()} estimates but {dts.numel()} step sizes; "
                            "pass one of each per accepted step")
    if (dts <= 0).any():
        raise PriorlabError(f"{who}: step sizes must be positive")
    return torch.mean(estimates * dts)


def stats_penalty(stats, heuristic: str = "error") -> torch.Tensor:
    """:func:`global_solver_penalty` of a :class:`~priorlab.nn.neural_ode.SolveStats` with the
    error (``"error"``) or stiffness (``"stiffness"``) estimates."""
    if heuristic not in HEURISTICS:
        raise did_you_mean(heuristic, HEURISTICS, "heuristic")
    estimates = stats.error_estimates if heuristic == "error" else stats.stiffness_estimates
    return global_solver_penalty(estimates, stats.dts)


def local_solver_penalty(estimate: torch.Tensor, dt: float) -> torch.Tensor:
    """``estimate * dt`` of the one randomly placed step (LocalRegNeuralDE's ``EEst * dt``)."""
    who = "local_solver_penalty"
    if not isinstance(estimate, torch.Tensor) or estimate.numel() != 1:
        raise PriorlabError(f"{who}: estimate must be a one-element tensor, got {estimate!r}")
    dt = check_number(dt, "dt", who=who, low=0.0, low_open=True)
    if not torch.isfinite(estimate.detach()).all():
        raise PriorlabError(f"{who}: estimate is not finite")
    return estimate.reshape(()) * dt


def regularised_loss(task_loss: torch.Tensor, penalty: torch.Tensor, strength: float) -> torch.Tensor:
    """``task_loss + strength * penalty``; strength 0 returns ``task_loss`` itself."""
    who = "regularised_loss"
    strength = check_number(strength, "strength", who=who, low=0.0)
    check_tensor(task_loss, "task_loss", who=who, dtype="float", finite=True)
    check_tensor(penalty, "penalty", who=who, dtype="float", finite=True)
    if task_loss.numel() != 1 or penalty.numel() != 1:
        raise PriorlabError(f"{who}: task_loss and penalty must be scalars, got shapes "
                            f"{tuple(task_loss.shape)} and {tuple(penalty.shape)}")
    return task_loss if strength == 0.0 else task_loss + strength * penalty


def annealed_strength(start: float, end: float, epoch: int, epochs: int) -> float:
    """Exponential decay from ``start`` (epoch 0) towards ``end`` (epoch ``epochs``), the official
    schedule lambda_0 exp(-k epoch), k = log(lambda_0 / lambda_1) / epochs (100 -> 10 there)."""
    who = "annealed_strength"
    start = check_number(start, "start", who=who, low=0.0, low_open=True)
    end = check_number(end, "end", who=who, low=0.0, low_open=True)
    epoch = check_number(epoch, "epoch", who=who, low=0, integer=True)
    epochs = check_number(epochs, "epochs", who=who, low=1, integer=True)
    return start * (end / start) ** (epoch / epochs)
