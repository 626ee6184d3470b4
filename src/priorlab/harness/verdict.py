"""The one verdict rule. Declared here once; no paper overrides it.

Each comparison pairs method and baseline runs by seed and takes the per-seed effect
``sign * (method - baseline)`` (sign = +1 when higher is better; for an interaction
``(method - baseline) - (method2 - baseline2)``), its mean and a two-sided 95% Student-t
interval. The interval's half-width is never below the metric's resolution (for an accuracy on
n items, 1/n): identical seeds do not make a difference of one test item certain. Then:

- superiority: reproduced when the mean effect is at least ``min_effect`` and the interval
  excludes zero; not reproduced when the whole interval lies below ``min_effect``;
- non-inferiority: reproduced when the interval's lower end lies above ``-margin``; not
  reproduced when its upper end lies below ``-margin``;
- otherwise inconclusive (fewer than two paired seeds are always inconclusive).

Two rules keep a verdict from saying more than the runs support:

- under budget: a "not reproduced" obtained with less training than the paper's (the claim's
  declared :class:`~priorlab.harness.claim.Budget`) is "inconclusive (under the paper's budget)";
- grid edge: when an arm of the comparison selected a tuned hyperparameter at the edge of its
  grid in any seed, the arm may be under-tuned and the comparison is inconclusive.

A paper is reproduced only when every comparison and every guard metric on every comparison is;
not reproduced when any of them is not; inconclusive otherwise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Test:
    method: str
    baseline: str
    metric: str
    kind: str
    threshold: float  # min_effect for superiority, margin for non-inferiority
    n: int
    effect: float  # mean paired effect, sign-adjusted (positive = method better)
    ci_low: float
    ci_high: float
    verdict: str
    label: str = ""  # "m vs b", or the interaction "(m vs b) - (m2 vs b2)"
    clause: str = ""
    card: str = ""
    resolution: float = 0.0
    reason: str = ""  # why a verdict was downgraded to inconclusive, if it was

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}


def paired_interval(effects, resolution: float = 0.0) -> tuple[float, float, float]:
    """Mean and 95% t-interval of paired effects, never narrower than ``resolution`` on each
    side; an infinite interval below two samples."""
    d = np.asarray(effects, dtype=float)
    if d.size == 0:
        return math.nan, -math.inf, math.inf
    mean = float(d.mean())
    if d.size < 2:
        return mean, -math.inf, math.inf
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
    half = max(half, resolution)
    return mean, mean - half, mean + half


def decide(kind: str, effect: float, ci_low: float, ci_high: float, threshold: float, n: int) -> str:
    if n < 2 or not math.isfinite(effect):
        return INCONCLUSIVE
    if kind == "superiority":
        if effect >= threshold and ci_low > 0:
            return REPRODUCED
        if ci_high < threshold:
            return NOT_REPRODUCED
        return INCONCLUSIVE
    if kind == "non-inferiority":
        if ci_low > -threshold:
            return REPRODUCED
        if ci_high < -threshold:
            return NOT_REPRODUCED
        return INCONCLUSIVE
    raise ValueError(f"unknown claim kind {kind!r}")


def compare(method_values: dict[int, float], baseline_values: dict[int, float], *, method: str,
            baseline: str, metric: str, higher_is_better: bool, kind: str, threshold: float,
            resolution: float = 0.0, minus: tuple[dict[int, float], dict[int, float]] | None = None,
            under_budget: str = "", grid_edge: str = "", label: str = "", clause: str = "",
            card: str = "") -> Test:
    """One comparison on one metric; values map seed -> metric.

    ``minus`` holds the values of the second pair of an interaction; ``under_budget`` and
    ``grid_edge`` are the reasons (empty when they do not apply) for the two downgrade rules.
    """
    pairs = [method_values, baseline_values, *(minus or ())]
    seeds = sorted(set.intersection(*(set(p) for p in pairs)))
    sign = 1.0 if higher_is_better else -1.0
    effects = [sign * (method_values[s] - baseline_values[s]) for s in seeds]
    if minus:
        effects = [e - sign * (minus[0][s] - minus[1][s]) for e, s in zip(effects, seeds)]
    # the difference of two metric values (four for an interaction) resolves to this at best
    floor = resolution * (2 if minus else 1)
    effect, lo, hi = paired_interval(effects, floor)
    verdict = decide(kind, effect, lo, hi, threshold, len(seeds))
    reason = ""
    if grid_edge and verdict != INCONCLUSIVE:
        verdict, reason = INCONCLUSIVE, grid_edge
    elif under_budget and verdict == NOT_REPRODUCED:
        verdict, reason = INCONCLUSIVE, under_budget
    return Test(method, baseline, metric, kind, threshold, len(seeds), effect, lo, hi, verdict,
                label or f"{method} vs {baseline}", clause, card, floor, reason)


def combine(verdicts) -> str:
    verdicts = list(verdicts)
    if verdicts and all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    if any(v == NOT_REPRODUCED for v in verdicts):
        return NOT_REPRODUCED
    return INCONCLUSIVE


def verdict_text(verdict: str, tests) -> str:
    """The verdict with the reasons that made tests inconclusive, e.g.
    ``inconclusive (under the paper's budget: ours 4,000 epochs, paper 80,000 epochs)``."""
    if verdict != INCONCLUSIVE:
        return verdict
    reasons = list(dict.fromkeys(part for t in tests if t.reason and t.verdict == INCONCLUSIVE
                                 for part in t.reason.split("; ")))
    return f"{verdict} ({'; '.join(reasons)})" if reasons else verdict
