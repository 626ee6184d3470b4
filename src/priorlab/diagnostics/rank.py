"""How many directions a feature matrix really uses.

- :func:`effective_rank`: Roy & Vetterli, "The effective rank: a measure of effective
  dimensionality", EUSIPCO 2007. With singular values σ and p_i = σ_i / Σσ,
  ``erank = exp(-Σ p_i log p_i)``: a continuous rank, 1 for a rank-one matrix, n for n equal
  singular values.
- :func:`srank`: Kumar, Agarwal, Ghosh & Levine, "Implicit Under-Parameterization Inhibits
  Data-Efficient Deep Reinforcement Learning", ICLR 2021, arXiv:2010.14498.
  ``srank_δ = min{k : Σ_{i<=k} σ_i / Σ σ_i >= 1 - δ}`` with δ = 0.01 (the paper's choice).

Both take a matrix of shape (samples, features), e.g. penultimate-layer features of a batch,
and use its singular values as they are (no centring; centre the rows first if the mean
should not count as a direction). An all-zero matrix has rank 0 under both.
"""

from __future__ import annotations

import math

import torch

from priorlab.errors import PriorlabError


def _singular_values(matrix: torch.Tensor) -> torch.Tensor:
    if not isinstance(matrix, torch.Tensor) or matrix.dim() != 2 or not matrix.is_floating_point():
        got = (f"{matrix.dtype} tensor of shape {tuple(matrix.shape)}"
               if isinstance(matrix, torch.Tensor) else type(matrix).__name__)
        raise PriorlabError(f"rank measures need a 2-D floating-point (samples, features) matrix, "
                            f"got {got}; flatten features with x.flatten(1)")
    if matrix.numel() == 0:
        raise PriorlabError(f"rank measures need a non-empty matrix, got shape {tuple(matrix.shape)}")
    if not torch.isfinite(matrix).all():
        raise PriorlabError("the matrix holds NaN or inf; rank measures need finite entries")
    return torch.linalg.svdvals(matrix.detach().to(torch.float64))


def effective_rank(matrix: torch.Tensor) -> float:
    """Roy & Vetterli's effective rank, ``exp`` of the entropy of the normalised singular values."""
    sigma = _singular_values(matrix)
    total = sigma.sum()
    if total == 0:
        return 0.0
    p = sigma / total
    p = p[p > 0]  # 0 log 0 = 0
    return math.exp(float(-(p * p.log()).sum()))


def srank(matrix: torch.Tensor, delta: float = 0.01) -> int:
    """Kumar et al.'s srank: how many top singular values hold a ``1 - delta`` share of their sum."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 <= delta < 1:
        raise PriorlabError(f"delta must be a number in [0, 1), got {delta!r} (the paper uses 0.01)")
    sigma = _singular_values(matrix)
    total = sigma.sum()
    if total == 0:
        return 0
    share = torch.cumsum(sigma, 0) / total
    # rounding can leave the last cumulative share a hair under 1; the full count always qualifies
    reached = torch.nonzero(share >= (1 - delta) * (1 - 1e-12))
    return int(reached[0]) + 1 if len(reached) else int(sigma.numel())
