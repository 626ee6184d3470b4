"""The one verdict rule. Declared here once; no paper overrides it.

Each comparison pairs method and baseline runs by seed and takes the per-seed effect
``sign * (method - baseline)`` (sign = +1 when higher is better), its mean and a two-sided 95%
Student-t interval. Then, by the claim's kind:

- superiority: reproduced when the mean effect is at least ``min_effect`` and the interval
  excludes zero; not reproduced when the whole interval lies below ``min_effect``;
- non-inferiority: reproduced when the interval's lower end lies above ``-margin``; not
  reproduced when its upper end lies below ``-margin``;
- otherwise inconclusive (fewer than two paired seeds are always inconclusive).

A paper is reproduced only when every comparison and every guard metric on every comparison is;
not reproduced when any of them is not; inconclusive otherwise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
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

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}


def paired_interval(effects) -> tuple[float, float, float]:
    """Mean and 95% t-interval of paired effects; infinite interval below two samples."""
    d = np.asarray(effects, dtype=float)
    if d.size == 0:
        return math.nan, -math.inf, math.inf
    mean = float(d.mean())
    if d.size < 2:
        return mean, -math.inf, math.inf
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
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
            baseline: str, metric: str, higher_is_better: bool, kind: str, threshold: float) -> Test:
    """One comparison on one metric; values map seed -> metric."""
    seeds = sorted(set(method_values) & set(baseline_values))
    sign = 1.0 if higher_is_better else -1.0
    effects = [sign * (method_values[s] - baseline_values[s]) for s in seeds]
    effect, lo, hi = paired_interval(effects)
    return Test(method, baseline, metric, kind, threshold, len(seeds), effect, lo, hi,
                decide(kind, effect, lo, hi, threshold, len(seeds)))


def combine(verdicts) -> str:
    verdicts = list(verdicts)
    if verdicts and all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    if any(v == NOT_REPRODUCED for v in verdicts):
        return NOT_REPRODUCED
    return INCONCLUSIVE
