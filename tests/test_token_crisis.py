"""Seed 33 (To Repeat or Not To Repeat): card, claim orientation, the reproduction at smoke size."""

import math

import pytest

from priorlab.errors import PriorlabError
from priorlab.harness.verdict import NOT_REPRODUCED, REPRODUCED, compare
from priorlab.lm.corpus import repeated_token_budget
from priorlab.registry import get
from priorlab.reproductions import p033_repeat as repro

CLAIM = repro.CLAIM
SMOKE = CLAIM.tiers["smoke"]


def test_card_points_at_the_scheduler_and_the_reproduction():
    card = get(33)
    assert card.id == CLAIM.method == "token-crisis-repetition"
    assert card.component is repeated_token_budget and card.kind == "function"
    assert card.reproduction == "p033_repeat" and card.paper.arxiv == "2305.13230"


def _verdict(comparison, method_losses, baseline_losses):
    return compare(dict(enumerate(method_losses)), dict(enumerate(baseline_losses)),
                   method=comparison.method, baseline=comparison.baseline, metric=CLAIM.metric,
                   higher_is_better=CLAIM.higher_is_better, kind=comparison.kind,
                   threshold=comparison.min_effect).verdict


def test_comparisons_read_the_claim_the_right_way_round():
    degradation, growth, dropout_helps, dropout_beats_wd = CLAIM.comparisons
    assert (degradation.method, degradation.baseline) == ("rep1_none", "rep16_none")
    assert (growth.method, growth.baseline) == ("rep4_none", "rep16_none")
    assert (dropout_helps.method, dropout_helps.baseline) == ("rep16_dropout", "rep16_none")
    assert (dropout_beats_wd.method, dropout_beats_wd.baseline) == ("rep16_dropout", "rep16_wd")
    for comparison in CLAIM.comparisons:
        assert comparison.kind == "superiority" and comparison.min_effect == repro.MIN_EFFECT
    fresh, repeated = [2.00, 2.05, 2.02, 2.01, 2.03], [2.50, 2.61, 2.55, 2.52, 2.58]
    # lower held-out loss with fresh data: degradation reproduced; the reverse: not reproduced
    assert _verdict(degradation, fresh, repeated) == REPRODUCED
    assert _verdict(degradation, repeated, fresh) == NOT_REPRODUCED


@pytest.fixture(scope="module")
def smoke_runs():
    return {arm: repro.run(arm, SMOKE, seed=0) for arm in CLAIM.arms}


def test_every_arm_runs_at_smoke_size(smoke_runs):
    for arm, output in smoke_runs.items():
        assert set(output.metrics) == {CLAIM.metric, *CLAIM.extra_metrics}, arm
        assert all(math.isfinite(v) for v in output.metrics.values()), arm
        for name in CLAIM.curves:
            curve = output.curves[name]
            assert len(curve["x"]) == len(curve["y"]) == SMOKE["eval_points"], (arm, name)
        assert output.info["tokens"] == SMOKE["total_tokens"]  # the budget is the same for all


def test_arms_differ_only_in_repetition_and_regulariser(smoke_runs):
    starts = {output.info["slice_start"] for output in smoke_runs.values()}
    assert len(starts) == 1  # paired: one data slice per seed, nested across repetitions
    for arm, output in smoke_runs.items():
        repetitions = int(arm.split("_")[0].removeprefix("rep"))
        assert output.metrics["unique_tokens"] == SMOKE["total_tokens"] // repetitions
    assert smoke_runs["rep16_dropout"].metrics != smoke_runs["rep16_none"].metrics
    assert smoke_runs["rep16_wd"].metrics != smoke_runs["rep16_none"].metrics
    # memorising 1/16 of the data: training loss far below held-out loss
    gap = smoke_runs["rep16_none"].metrics["generalisation_gap"]
    assert gap > smoke_runs["rep1_none"].metrics["generalisation_gap"] + 0.5


def test_run_is_deterministic(smoke_runs):
    assert repro.run("rep16_wd", SMOKE, seed=0).metrics == smoke_runs["rep16_wd"].metrics


def test_unknown_arm_suggests_the_closest():
    with pytest.raises(PriorlabError, match="rep16_dropout"):
        repro.run("rep16_dropuot", SMOKE, seed=0)
