"""Rep4Ex: the linear-invariance penalty and the control-function extrapolation formula.

Saengkyongam, Rosenfeld, Ravikumar, Pfister, Peters, "Identifying Representations for
Intervention Extrapolation", ICLR 2024 (arXiv 2310.04295).

Model (paper, Sec. 2): actions ``A`` (k-dim, exogenous), latents ``Z = M0 A + V``, observations
``X = g0(Z)``, outcome ``Y = l(Z) + U`` with ``U`` and ``V`` dependent (hidden confounding).

*Linear invariance* (Sec. 4): an encoder ``phi`` identifies ``Z`` up to an affine map when
``phi(X) - M A`` is independent of ``A`` for some matrix ``M``. The method (Sec. 5) enforces the
conditional-mean form of this constraint, ``E[phi(X) - gamma - M A | A] = 0``, through the
maximum moment restriction (MMR, Muandet et al. 2020) with a Gaussian kernel on ``A``::

    MMR(phi) = 1 / n^2 * sum_{i, j} r_i^T r_j k(a_i, a_j),
    r_i = phi(x_i) - gamma_hat - M_hat a_i,  (gamma_hat, M_hat) = OLS of phi(X) on (1, A),

where the OLS fit is in closed form, so gradients flow through it. ``MMR = 0`` in population
iff the conditional mean of the residual given ``A`` is zero. We use this V-statistic form: it is
a squared RKHS norm, hence never negative; the unbiased U-statistic (``i != j``) can be, and an
encoder trained against it learns to drive it below zero instead of towards it.

*Control function* (Sec. 3, Prop. 3.x): with ``V_hat = phi(X) - gamma_hat - M_hat A`` and an
additive fit ``E[Y | phi(X), V_hat] = nu(phi(X)) + lam(V_hat)``,

    E[Y | do(A = a*)] = mean_i [ nu(gamma_hat + M_hat a* + V_hat_i) + lam(V_hat_i) ],

which needs no observation at ``a*``: extrapolation rests on ``V_hat`` having full support.
"""

from __future__ import annotations

from typing import Callable

import torch

from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_tensor


def _check_pair(latent: torch.Tensor, action: torch.Tensor, who: str) -> None:
    # torch.linalg.lstsq needs float32 or float64, one dtype for both
    check_tensor(latent, "latent", who=who, ndim=2, dtype=(torch.float32, torch.float64),
                 finite=True, non_empty=True)
    check_tensor(action, "action", who=who, shape=(latent.shape[0], None), dtype=latent.dtype,
                 finite=True, non_empty=True,
                 hint="pass one action row per latent row, shape (n, k), in latent's dtype")
    if latent.shape[0] <= action.shape[1] + 1:
        raise PriorlabError(f"{who}: need more rows than action dimensions + 1 for the OLS fit, "
                            f"got n={latent.shape[0]} with k={action.shape[1]}")


def linear_fit(latent: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OLS of ``latent`` (n, d) on ``(1, action)`` (n, k): ``(intercept (d,), coef (d, k), residual (n, d))``.

    Differentiable in ``latent`` (the normal equations are solved, not iterated).
    """
    _check_pair(latent, action, "linear_fit")
    design = torch.cat([torch.ones_like(action[:, :1]), action], dim=1)
    solution = torch.linalg.lstsq(design, latent).solution  # (k + 1, d)
    residual = latent - design @ solution
    return solution[0], solution[1:].T, residual


def median_bandwidth(action: torch.Tensor) -> float:
    """Median of the pairwise distances between the rows of ``action`` (the median heuristic)."""
    check_tensor(action, "action", who="median_bandwidth", ndim=2, dtype="float", finite=True)
    distances = torch.cdist(action, action)
    off_diagonal = distances[~torch.eye(len(action), dtype=torch.bool)]
    if off_diagonal.numel() == 0 or float(off_diagonal.median()) <= 0:
        raise PriorlabError("median_bandwidth: need at least two distinct action rows")
    return float(off_diagonal.median())


def linear_invariance_penalty(latent: torch.Tensor, action: torch.Tensor, *,
                              bandwidth: float | None = None, standardize: bool = True) -> torch.Tensor:
    """MMR statistic of the linear-invariance constraint (V-statistic; see the module docstring).

    Args:
        latent: encoder outputs ``phi(X)``, shape (n, d).
        action: actions ``A``, shape (n, k).
        bandwidth: Gaussian-kernel bandwidth on ``A``; ``None`` = median heuristic on this batch.
        standardize: divide each latent coordinate by its batch std first, so the penalty cannot
            be lowered by shrinking ``phi`` (a decoder undoes any rescaling). Our choice; the
            statistic's zero set is unchanged.

    Returns a non-negative scalar.
    """
    _check_pair(latent, action, "linear_invariance_penalty")
    if not isinstance(standardize, bool):
        raise PriorlabError(f"linear_invariance_penalty: standardize must be True or False, got "
                            f"{type(standardize).__name__}")
    if bandwidth is None:
        bandwidth = median_bandwidth(action)
    bandwidth = check_number(bandwidth, "bandwidth", who="linear_invariance_penalty", low=0,
                             low_open=True)
    if not torch.finfo(action.dtype).tiny <= 2 * bandwidth ** 2 <= torch.finfo(action.dtype).max:
        raise PriorlabError(f"linear_invariance_penalty: bandwidth {bandwidth:g} squared under- or "
                            "overflows; rescale the actions")
    if standardize:
        latent = latent / latent.std(dim=0, keepdim=True).clamp_min(1e-8)
    _, _, residual = linear_fit(latent, action)
    kernel = torch.exp(-torch.cdist(action, action).square() / (2 * bandwidth ** 2))
    penalty = (kernel * (residual @ residual.T)).sum() / latent.shape[0] ** 2
    if not torch.isfinite(penalty):
        raise PriorlabError(f"linear_invariance_penalty: the penalty overflows {penalty.dtype} "
                            f"(latent up to {latent.abs().max().item():.3g}, action up to "
                            f"{action.abs().max().item():.3g}); rescale them")
    return penalty


def interventional_mean(outcome_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                        intercept: torch.Tensor, coef: torch.Tensor, residual: torch.Tensor,
                        new_action: torch.Tensor) -> torch.Tensor:
    """Control-function estimate of ``E[Y | do(A = a*)]`` for each row ``a*`` of ``new_action``.

    Args:
        outcome_fn: ``(latent, residual) -> E[Y | phi = latent, V_hat = residual]``, shape (m,);
            additive in the two arguments for the formula to extrapolate.
        intercept, coef, residual: the output of :func:`linear_fit` on the training data.
        new_action: actions to predict at, shape (m, k); may lie outside the training support.

    Returns shape (m,).
    """
    check_tensor(residual, "residual", who="interventional_mean", ndim=2, dtype="float",
                 finite=True, non_empty=True)
    d = residual.shape[1]
    check_tensor(coef, "coef", who="interventional_mean", ndim=2, shape=(d, None), dtype="float")
    check_tensor(intercept, "intercept", who="interventional_mean", shape=(d,), dtype="float")
    check_tensor(new_action, "new_action", who="interventional_mean", shape=(None, coef.shape[1]),
                 dtype="float", finite=True)
    n, m = residual.shape[0], new_action.shape[0]
    shifted = (intercept + new_action @ coef.T)[:, None, :] + residual[None, :, :]  # (m, n, d)
    values = outcome_fn(shifted.reshape(m * n, d), residual.repeat(m, 1))
    return values.reshape(m, n).mean(dim=1)
