"""Randomised smoothing: Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via
Randomized Smoothing" (ICML 2019, arXiv:1902.02918).

The smoothed classifier ``g(x) = argmax_c P(f(x + sigma * eps) = c)``, eps ~ N(0, I), is robust
within l2 radius ``sigma * Phi^-1(pA)`` whenever the top class has probability ``pA >= 1/2``.
:func:`certify` is the paper's CERTIFY (select the class with ``n0`` samples, estimate its
probability with ``n`` fresh samples, one-sided Clopper-Pearson lower bound at level ``alpha``);
:func:`predict` is PREDICT (binomial test between the two top counts). Both return
:data:`ABSTAIN` (-1) when the evidence is not enough.
"""

from __future__ import annotations

import math

import torch
from scipy.stats import beta as beta_dist
from scipy.stats import binomtest, norm

from priorlab.errors import PriorlabError

ABSTAIN = -1


def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion."""
    if not (isinstance(trials, int) and trials >= 1 and isinstance(successes, int)
            and 0 <= successes <= trials):
        raise PriorlabError(f"Clopper-Pearson needs integers 0 <= successes <= trials, trials >= 1; "
                            f"got successes={successes!r}, trials={trials!r}")
    _check_alpha(alpha)
    if successes == 0:
        return 0.0
    return float(beta_dist.ppf(alpha, successes, trials - successes + 1))


def _check_alpha(alpha) -> None:
    if not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise PriorlabError(f"alpha (failure probability) must lie in (0, 1), got {alpha!r}; "
                            "Cohen et al. use 0.001")


def _check(x, sigma, counts: dict[str, int], batch) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise PriorlabError("smoothing input x must be ONE floating-point example (no batch "
                            "dimension); loop over a test set")
    if not torch.isfinite(x).all():
        raise PriorlabError("smoothing input x contains NaN or inf")
    if not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise PriorlabError(f"sigma (noise level) must be a finite number > 0, got {sigma!r}")
    for name, value in {**counts, "batch": batch}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PriorlabError(f"{name} must be an integer >= 1, got {value!r}")


@torch.no_grad()
def sample_counts(base_classifier, x: torch.Tensor, sigma: float, num: int, batch: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """How often ``base_classifier`` (logits for a batch) predicts each class on ``x + sigma*eps``."""
    counts: torch.Tensor | None = None
    remaining = num
    while remaining > 0:
        size = min(batch, remaining)
        noise = torch.randn((size, *x.shape), generator=generator, dtype=x.dtype).to(x.device)
        logits = base_classifier(x.unsqueeze(0) + sigma * noise)
        if logits.ndim != 2 or logits.shape[0] != size:
            raise PriorlabError(f"base classifier must return logits of shape (batch, classes), "
                                f"got {tuple(logits.shape)} for a batch of {size}")
        found = torch.bincount(logits.argmax(dim=1).cpu(), minlength=logits.shape[1])
        counts = found if counts is None else counts + found
        remaining -= size
    return counts


def certify(base_classifier, x: torch.Tensor, sigma: float, n0: int, n: int, alpha: float,
            batch: int, generator: torch.Generator | None = None) -> tuple[int, float]:
    """CERTIFY: ``(class, l2 radius)``, or ``(ABSTAIN, 0.0)`` when the lower bound pA < 1/2."""
    _check(x, sigma, {"n0": n0, "n": n}, batch)
    _check_alpha(alpha)
    selection = sample_counts(base_classifier, x, sigma, n0, batch, generator)
    top = int(selection.argmax())
    estimation = sample_counts(base_classifier, x, sigma, n, batch, generator)
    p_lower = clopper_pearson_lower(int(estimation[top]), n, alpha)
    if p_lower < 0.5:
        return ABSTAIN, 0.0
    return top, float(sigma * norm.ppf(p_lower))


def predict(base_classifier, x: torch.Tensor, sigma: float, n: int, alpha: float, batch: int,
            generator: torch.Generator | None = None) -> int:
    """PREDICT: the smoothed class, or ABSTAIN when the two top counts are not separated at alpha."""
    _check(x, sigma, {"n": n}, batch)
    _check_alpha(alpha)
    counts = sample_counts(base_classifier, x, sigma, n, batch, generator)
    order = torch.argsort(counts, descending=True, stable=True)
    count_a = int(counts[order[0]])
    count_b = int(counts[order[1]]) if len(counts) > 1 else 0
    if binomtest(count_a, count_a + count_b, 0.5).pvalue > alpha:
        return ABSTAIN
    return int(order[0])
