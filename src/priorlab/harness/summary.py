"""From a claim and its finished runs to the per-paper result object (``--json``, report)."""

from __future__ import annotations

import math

import numpy as np

from priorlab.harness.claim import Claim
from priorlab.harness.verdict import combine, compare


def _finite_or_none(x: float):
    return x if math.isfinite(x) else None


def summarise(claim: Claim, records: list[dict], tier: str, n_seeds: int) -> dict:
    """Per-arm per-seed values, every comparison and guard test, and the combined verdict.

    The top-level ``effect``/``ci_low``/``ci_high`` are those of the first comparison on the
    primary metric; ``verdict`` combines all comparisons and guards by the one rule.
    """
    def values(metric: str) -> dict[str, dict[int, float]]:
        table: dict[str, dict[int, float]] = {arm: {} for arm in arms}
        for r in records:
            if r["arm"] in table and metric in r["metrics"]:
                table[r["arm"]][r["seed"]] = r["metrics"][metric]
        return table

    arms = claim.arms_for(tier)
    comparisons = claim.comparisons_for(tier)
    primary = values(claim.metric)
    tests = []
    for c in comparisons:
        threshold = c.min_effect if c.kind == "superiority" else c.margin
        tests.append(compare(primary[c.method], primary[c.baseline], method=c.method,
                             baseline=c.baseline, metric=claim.metric,
                             higher_is_better=claim.higher_is_better, kind=c.kind,
                             threshold=threshold))
    guard_tests = []
    for g in claim.guards:
        table = values(g.metric)
        threshold = g.min_effect if g.kind == "superiority" else g.margin
        for c in comparisons:
            guard_tests.append(compare(table[c.method], table[c.baseline], method=c.method,
                                       baseline=c.baseline, metric=g.metric,
                                       higher_is_better=g.higher_is_better, kind=g.kind,
                                       threshold=threshold))
    first = tests[0]
    metrics = [claim.metric, *claim.extra_metrics, *(g.metric for g in claim.guards)]
    arm_stats = {}
    for arm in arms:
        arm_stats[arm] = {}
        for metric in dict.fromkeys(metrics):
            vals = [r["metrics"][metric] for r in records if r["arm"] == arm and metric in r["metrics"]]
            arm_stats[arm][metric] = {
                "mean": float(np.mean(vals)) if vals else None,
                "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None, "n": len(vals)}
    return {
        "seed_id": claim.seed_id, "method": claim.method, "claim": claim.statement,
        "setting": claim.setting.get(tier, ""), "metric": claim.metric,
        "higher_is_better": claim.higher_is_better, "tier": tier,
        "values": {arm: {str(s): v for s, v in sorted(per_seed.items())} for arm, per_seed in primary.items()},
        "arm_stats": arm_stats,
        "effect": _finite_or_none(first.effect), "ci_low": _finite_or_none(first.ci_low),
        "ci_high": _finite_or_none(first.ci_high),
        "comparisons": [t.as_dict() for t in tests], "guards": [t.as_dict() for t in guard_tests],
        "verdict": combine(t.verdict for t in tests + guard_tests),
        "paper_value": claim.paper_value,
        "runs": len(records), "expected_runs": len(arms) * n_seeds,
        "wall_time_s": round(sum(r["wall_time_s"] for r in records), 1),
        "git_commits": sorted({r["git_commit"] for r in records}),
        "versions": [dict(v) for v in sorted({tuple(sorted(r["versions"].items())) for r in records})],
    }
