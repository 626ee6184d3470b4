"""Every reproduction at smoke size, through the harness as `priorlab reproduce` runs it.

The smoke tier checks the plumbing, not the claim: every arm runs every seed, the metrics are
finite, each metric the verdict needs has a resolution, and every method arm computes something
other than its baseline at the same seed (a method arm that silently equals its baseline would
make every full-tier verdict meaningless).
"""

import math

import pytest

from priorlab.harness.runner import load_results, reproduction_cards, run_reproductions
from priorlab.harness.summary import PIPELINE_OK, summarise

OWNERS = reproduction_cards()


@pytest.mark.parametrize("card", OWNERS, ids=lambda c: c.id)
def test_smoke_tier_runs_every_arm_and_the_method_differs_from_its_baseline(card, tmp_path):
    run_reproductions([card], tier="smoke", results=tmp_path)
    claim, records = load_results(card, "smoke", tmp_path)
    n_seeds = claim.seeds["smoke"]
    by_arm = {arm: {r["seed"]: r for r in records if r["arm"] == arm} for arm in claim.arms_for("smoke")}
    for arm, runs in by_arm.items():
        assert sorted(runs) == list(range(n_seeds)), f"arm {arm} lacks seeds"
    for record in records:
        assert claim.metric in record["metrics"]
        assert all(math.isfinite(v) for v in record["metrics"].values())
        for name, curve in record["curves"].items():
            assert len(curve["x"]) == len(curve["y"]) > 0, name
        for metric in {claim.metric, *(g.metric for g in claim.guards), *(b.metric for b in claim.bounds)}:
            assert record["resolution"].get(metric, claim.resolution.get(metric)), (
                f"{metric} has no resolution: give RunOutput.resolution or Claim.resolution")
    for c in claim.comparisons_for("smoke"):
        differs = [by_arm[c.method][s]["metrics"] != by_arm[c.baseline][s]["metrics"]
                   for s in range(n_seeds)]
        assert all(differs), f"{c.method} computes the same metrics as {c.baseline} at some seed"
    summary = summarise(claim, records, "smoke", n_seeds)
    assert summary["verdict"] == PIPELINE_OK and summary["runs"] == summary["expected_runs"]
