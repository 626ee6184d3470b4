"""From a claim and its finished runs to the per-paper result object (``--json``, report)."""

from __future__ import annotations

import math

import numpy as np

from priorlab.harness.claim import Bound, Budget, Claim, Comparison, threshold
from priorlab.harness.verdict import Test, combine, compare, verdict_text

PIPELINE_OK, PIPELINE_INCOMPLETE = "pipeline ok", "pipeline incomplete"
NOT_JUDGED = "not judged (smoke tier)"


def _finite_or_none(x: float):
    return x if math.isfinite(x) else None


def _values(records: list[dict], arms, metric: str) -> dict[str, dict[int, float]]:
    table: dict[str, dict[int, float]] = {arm: {} for arm in arms}
    for r in records:
        if r["arm"] in table and metric in r["metrics"]:
            table[r["arm"]][r["seed"]] = r["metrics"][metric]
    return table


def _resolution(claim: Claim, records: list[dict], arms, metric: str) -> float:
    """The coarsest resolution any compared run reports for ``metric``, else the claim's."""
    reported = [r.get("resolution", {}).get(metric) for r in records if r["arm"] in arms]
    reported = [float(x) for x in reported if x is not None]
    return max(reported) if reported else float(claim.resolution.get(metric, 0.0))


def _grid_edges(records: list[dict], arms) -> str:
    """Why a comparison is inconclusive for an under-tuned arm, or ''."""
    notes = []
    for arm in dict.fromkeys(arms):
        runs = [r for r in records if r["arm"] == arm]
        for name in sorted({n for r in runs for n in r.get("tuning", {})}):
            edge = 0
            for r in runs:
                t = r.get("tuning", {}).get(name)
                if t and len(t["grid"]) > 1 and t["selected"] in (min(t["grid"]), max(t["grid"])):
                    edge += 1
            if edge:
                notes.append(f"{arm} selected {name} at its grid edge in {edge}/{len(runs)} seeds")
    return "; ".join(notes)


def _under_budget(budget: Budget | None, tier: str) -> str:
    """The downgrade reason when the full tier trains less than the paper, or ''."""
    if tier == "full" and budget is not None and budget.under:
        return f"under the paper's budget: {budget.describe()}"
    return ""


def _test(claim: Claim, c: Comparison, records: list[dict], tier: str, *, rule, metric: str,
          higher_is_better: bool, clause: str) -> Test:
    """Comparison ``c`` on ``metric``, judged by ``rule`` (the comparison itself or a guard)."""
    table = _values(records, c.arms, metric)
    return compare(table[c.method], table[c.baseline], method=c.method, baseline=c.baseline,
                   metric=metric, higher_is_better=higher_is_better, kind=rule.kind,
                   threshold=threshold(rule), resolution=_resolution(claim, records, c.arms, metric),
                   minus=(table[c.minus[0]], table[c.minus[1]]) if c.minus else None,
                   under_budget=_under_budget(claim.budget_of(c), tier),
                   grid_edge=_grid_edges(records, c.arms), label=c.label, clause=clause,
                   card=c.card or claim.method)


def _bound_test(claim: Claim, b: Bound, records: list[dict], tier: str) -> Test:
    values = _values(records, (b.arm,), b.metric)[b.arm]
    return compare(values, {seed: b.bar for seed in values}, method=b.arm, baseline=f"bar {b.bar:g}",
                   metric=b.metric, higher_is_better=b.higher_is_better, kind=b.kind,
                   threshold=threshold(b), resolution=_resolution(claim, records, (b.arm,), b.metric),
                   under_budget=_under_budget(claim.budget, tier),
                   grid_edge=_grid_edges(records, (b.arm,)), label=b.label, clause=b.clause,
                   card=b.card or claim.method)


def clause_table(claim: Claim) -> list[dict]:
    """Each clause of the claim with the comparisons/guards that test it or why it is untested."""
    rows = []
    for clause in claim.clauses:
        tested = [c.label for c in claim.comparisons if c.clause == clause]
        tested += [f"guard {g.metric}" for g in claim.guards if g.clause == clause]
        tested += [f"{b.label} ({b.metric})" for b in claim.bounds if b.clause == clause]
        untested = [u.reason for u in claim.untested if u.clause == clause]
        rows.append({"clause": clause, "tested_by": tested, "untested": "; ".join(untested)})
    return rows


def summarise(claim: Claim, records: list[dict], tier: str, n_seeds: int) -> dict:
    """Per-arm per-seed values, every comparison and guard test, and the combined verdict.

    The top-level ``effect``/``ci_low``/``ci_high`` are those of the first comparison on the
    primary metric; ``verdict`` combines all comparisons and guards by the one rule. At the
    smoke tier nothing is judged: the tier checks the pipeline, not the claim.
    """
    arms = claim.arms_for(tier)
    comparisons = claim.comparisons_for(tier)
    tests = [_test(claim, c, records, tier, metric=claim.metric,
                   higher_is_better=claim.higher_is_better, rule=c, clause=c.clause)
             for c in comparisons]
    guard_tests = [_test(claim, c, records, tier, metric=g.metric,
                         higher_is_better=g.higher_is_better, rule=g, clause=g.clause or c.clause)
                   for g in claim.guards for c in comparisons if not c.minus]
    tests += [_bound_test(claim, b, records, tier) for b in claim.bounds if b.arm in arms]
    all_tests = tests + guard_tests
    runs, expected = len(records), len(arms) * n_seeds
    complete = runs >= expected
    if tier == "full":
        verdict = combine(t.verdict for t in all_tests)
        text = verdict_text(verdict, all_tests)
        status = text if complete else f"incomplete ({runs}/{expected} runs)"
        cards = {}
        for card in dict.fromkeys(t.card for t in all_tests):
            own = [t for t in all_tests if t.card == card]
            cards[card] = (verdict_text(combine(t.verdict for t in own), own) if complete else status)
    else:
        verdict = text = status = PIPELINE_OK if complete else PIPELINE_INCOMPLETE
        cards = {t.card: status for t in all_tests}

    def as_dict(t: Test) -> dict:
        d = t.as_dict()
        if tier != "full":
            d.update(verdict=NOT_JUDGED, reason="")
        return d

    metrics = [claim.metric, *claim.extra_metrics, *(g.metric for g in claim.guards)]
    arm_stats = {}
    for arm in arms:
        arm_stats[arm] = {}
        for metric in dict.fromkeys(metrics):
            vals = [r["metrics"][metric] for r in records if r["arm"] == arm and metric in r["metrics"]]
            arm_stats[arm][metric] = {
                "mean": float(np.mean(vals)) if vals else None,
                "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None, "n": len(vals),
                "resolution": _resolution(claim, records, (arm,), metric) or None}
    first = tests[0]
    budget = claim.budget
    return {
        "seed_id": claim.seed_id, "method": claim.method, "claim": claim.statement,
        "setting": claim.setting.get(tier, ""), "metric": claim.metric,
        "higher_is_better": claim.higher_is_better, "tier": tier, "revision": claim.revision,
        "values": {arm: {str(s): v for s, v in sorted(per_seed.items())}
                   for arm, per_seed in _values(records, arms, claim.metric).items()},
        "arm_stats": arm_stats,
        "effect": _finite_or_none(first.effect), "ci_low": _finite_or_none(first.ci_low),
        "ci_high": _finite_or_none(first.ci_high),
        "comparisons": [as_dict(t) for t in tests], "guards": [as_dict(t) for t in guard_tests],
        "verdict": verdict, "verdict_text": text, "status": status, "cards": cards,
        "complete": complete,
        "under_budget": bool(budget and budget.under) or any(
            claim.budget_of(c) is not None and claim.budget_of(c).under for c in comparisons),
        "budget": budget.describe() if budget else None,
        "clauses": clause_table(claim),
        "untested": [{"clause": u.clause, "reason": u.reason} for u in claim.untested],
        "paper_value": claim.paper_value,
        "runs": runs, "expected_runs": expected,
        "wall_time_s": round(sum(r["wall_time_s"] for r in records), 1),
        "git_commits": sorted({r["git_commit"] for r in records}),
        "versions": [dict(v) for v in sorted({tuple(sorted(r["versions"].items())) for r in records})],
    }

