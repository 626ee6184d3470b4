"""Paper 16's reproduction: the relative ECE bar and the arms it compares."""

import math

import pytest

from priorlab.errors import PriorlabError
from priorlab.reproductions import p016_pskd


def test_relative_bar_is_a_fixed_log_ratio():
    (comparison,) = p016_pskd.CLAIM.comparisons
    assert p016_pskd.CLAIM.metric == "test_log_ece"
    # ln(ECE_ce) - ln(ECE_pskd) >= min_effect  <=>  ECE_pskd <= 0.8 ECE_ce, whatever ECE_ce is
    for ece_ce in (0.12, 0.069, 0.01):
        assert math.log(ece_ce) - math.log(0.8 * ece_ce) == pytest.approx(comparison.min_effect)


def test_pskd_differs_from_cross_entropy_at_the_same_seed():
    cfg = dict(p016_pskd.CLAIM.tiers["smoke"], epochs=4, eval_every=2)
    outs = {arm: p016_pskd.run(arm, cfg, seed=0) for arm in ("ce", "pskd")}
    for out in outs.values():
        m = out.metrics
        assert m["test_log_ece"] == pytest.approx(math.log(max(m["test_ece"], out.resolution["test_ece"])))
        n_test = round(1 / out.resolution["test_acc"])
        assert n_test == 360  # the digits test split
        # accuracy is a count over the test set
        assert m["test_acc"] * n_test == pytest.approx(round(m["test_acc"] * n_test))
        assert out.resolution["test_log_ece"] == pytest.approx(
            1 / (n_test * max(m["test_ece"], 1 / n_test)))
    # same data, initialisation and order: only PS-KD's targets differ (from epoch 1 on)
    assert outs["pskd"].metrics["test_ece"] != outs["ce"].metrics["test_ece"]
    assert outs["pskd"].metrics["test_nll"] != outs["ce"].metrics["test_nll"]
    with pytest.raises(PriorlabError):
        p016_pskd.run("mixup", cfg, seed=0)
