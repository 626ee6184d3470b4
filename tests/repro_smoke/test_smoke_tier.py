"""Every reproduction at smoke size, through the harness as `priorlab reproduce` runs it."""

import math

import pytest

from priorlab.harness.runner import load_results, reproduction_cards, run_reproductions
from priorlab.harness.summary import summarise
from priorlab.harness.verdict import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED

OWNERS = reproduction_cards()


@pytest.mark.parametrize("card", OWNERS, ids=lambda c: c.id)
def test_smoke_tier_results_are_complete_and_finite(card, tmp_path):
    run_reproductions([card], tier="smoke", results=tmp_path)
    claim, records = load_results(card, "smoke", tmp_path)
    n_seeds = claim.seeds["smoke"]
    assert len(records) == len(claim.arms_for("smoke")) * n_seeds
    for record in records:
        assert claim.metric in record["metrics"]
        assert all(math.isfinite(v) for v in record["metrics"].values())
        for name, curve in record["curves"].items():
            assert len(curve["x"]) == len(curve["y"]) > 0, name
    summary = summarise(claim, records, "smoke", n_seeds)
    assert summary["verdict"] in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
    assert summary["runs"] == summary["expected_runs"]
