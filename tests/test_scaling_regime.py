"""Seed 6 (Rethinking Conventional Wisdom): card, how "stops helping" is declared, smoke runs."""

import math

import pytest

from priorlab.errors import PriorlabError
from priorlab.harness.verdict import NOT_REPRODUCED, REPRODUCED, compare
from priorlab.lm.train import train_at_budget
from priorlab.registry import get
from priorlab.reproductions import p006_scaling as repro

CLAIM = repro.CLAIM
SMOKE = CLAIM.tiers["smoke"]


def test_card_points_at_the_measurement_system():
    card = get(6)
    assert card.id == CLAIM.method == "scaling-regime"
    assert card.component is train_at_budget and card.kind == "system"
    assert card.reproduction == "p006_scaling" and card.paper.arxiv == "2409.15156"


def _verdict(comparison, method_losses, baseline_losses):
    threshold = comparison.min_effect if comparison.kind == "superiority" else comparison.margin
    return compare(dict(enumerate(method_losses)), dict(enumerate(baseline_losses)),
                   method=comparison.method, baseline=comparison.baseline, metric=CLAIM.metric,
                   higher_is_better=CLAIM.higher_is_better, kind=comparison.kind,
                   threshold=threshold).verdict


def _shifted(values, shift):
    return [v + shift for v in values]


BASE = [2.00, 2.04, 2.01, 2.03, 2.02]


def test_helps_when_repeated_is_superiority():
    wd_repeated, batch_repeated = CLAIM.comparisons[0], CLAIM.comparisons[2]
    for comparison in (wd_repeated, batch_repeated):
        assert comparison.kind == "superiority" and comparison.min_effect == repro.MIN_EFFECT
    # weight decay lowers repeated-regime loss by 0.1: reproduced; raises it: not reproduced
    assert _verdict(wd_repeated, _shifted(BASE, -0.1), BASE) == REPRODUCED
    assert _verdict(wd_repeated, _shifted(BASE, 0.1), BASE) == NOT_REPRODUCED
    # the small batch is the method arm: lower loss than the large batch -> reproduced
    assert (batch_repeated.method, batch_repeated.baseline) == ("repeated", "repeated_large_batch")
    assert _verdict(batch_repeated, BASE, _shifted(BASE, 0.1)) == REPRODUCED


def test_stops_helping_online_is_non_inferiority_of_dropping_it():
    wd_online, batch_online = CLAIM.comparisons[1], CLAIM.comparisons[3]
    for comparison in (wd_online, batch_online):
        assert comparison.kind == "non-inferiority" and comparison.margin == repro.MIN_EFFECT
    assert (wd_online.method, wd_online.baseline) == ("online", "online_wd")
    assert (batch_online.method, batch_online.baseline) == ("online_large_batch", "online")
    # online, weight decay buys 0.005 (below the margin): "stopped helping" is reproduced
    assert _verdict(wd_online, BASE, _shifted(BASE, -0.005)) == REPRODUCED
    # ... weight decay hurts online: also reproduced (the claim is that the benefit vanishes)
    assert _verdict(wd_online, BASE, _shifted(BASE, 0.05)) == REPRODUCED
    # ... weight decay still buys 0.1 online: not reproduced
    assert _verdict(wd_online, BASE, _shifted(BASE, -0.1)) == NOT_REPRODUCED
    # a large batch that costs 0.1 online (small batch still helps): not reproduced
    assert _verdict(batch_online, _shifted(BASE, 0.1), BASE) == NOT_REPRODUCED


@pytest.fixture(scope="module")
def smoke_runs():
    return {arm: repro.run(arm, SMOKE, seed=1) for arm in CLAIM.arms}


def test_every_arm_runs_at_smoke_size(smoke_runs):
    for arm, output in smoke_runs.items():
        assert set(output.metrics) == {CLAIM.metric, *CLAIM.extra_metrics}, arm
        assert all(math.isfinite(v) for v in output.metrics.values()), arm
        for name in CLAIM.curves:
            assert len(output.curves[name]["x"]) == len(output.curves[name]["y"]) > 0
        assert output.info["tokens"] == SMOKE["total_tokens"]  # same budget in every arm


def test_arms_set_regime_batch_and_decay(smoke_runs):
    for arm, output in smoke_runs.items():
        info = output.info
        assert info["repetitions"] == (repro.REPEATED_EPOCHS if arm.startswith("repeated") else 1)
        assert info["unique_tokens"] == SMOKE["total_tokens"] // info["repetitions"]
        batch = "large_batch" if arm.endswith("large_batch") else "small_batch"
        assert info["batch_size"] == SMOKE[batch]
        assert info["weight_decay"] == (SMOKE["weight_decay"] if arm.endswith("_wd") else 0.0)
        assert info["steps"] * info["batch_size"] * SMOKE["seq_len"] == SMOKE["total_tokens"]
    assert len({output.info["slice_start"] for output in smoke_runs.values()}) == 1


def test_run_is_deterministic(smoke_runs):
    assert repro.run("online_wd", SMOKE, seed=1).metrics == smoke_runs["online_wd"].metrics


def test_unknown_arm_is_a_clear_error():
    with pytest.raises(PriorlabError, match="unknown arm 'offline'"):
        repro.run("offline", SMOKE, seed=0)
