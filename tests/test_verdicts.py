"""Verdicts you can trust: resolution, thresholds, budgets, grid edges, interactions, per-card
status, and the pre-registration lock."""

import dataclasses
import json
import math

import pytest

from priorlab.errors import PriorlabError
from priorlab.harness.claim import Bound, Budget, Claim, Comparison, Guard, Revision, Untested
from priorlab.harness.registration import check, declaration, read_lock, register
from priorlab.harness.summary import summarise
from priorlab.harness.verdict import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, compare

ARMS = ("base", "m1", "m2")


def _claim(**kw):
    base = dict(seed_id=0, method="m1-card", statement="m1 and m2 beat base", setting={},
                metric="acc", higher_is_better=True, arms=ARMS,
                comparisons=(Comparison("m1", "base", min_effect=0.01, clause="m1 beats base"),
                             Comparison("m2", "base", min_effect=0.01, clause="m2 beats base",
                                        card="m2-card")),
                clauses=("m1 beats base", "m2 beats base"),
                tiers={"smoke": {}, "full": {"n": 1}}, seeds={"smoke": 2, "full": 3})
    base.update(kw)
    return Claim(**base)


def _records(values: dict[str, list[float]], resolution=None, tuning=None):
    out = []
    for arm, vals in values.items():
        for seed, v in enumerate(vals):
            out.append({"arm": arm, "seed": seed, "metrics": {"acc": v, "ece": 0.1},
                        "resolution": {"acc": resolution} if resolution else {},
                        "tuning": (tuning or {}).get(arm, {}), "wall_time_s": 1.0,
                        "git_commit": "x", "versions": {"torch": "t"}})
    return out


def _cmp(m, b, **kw):
    return compare(dict(enumerate(m)), dict(enumerate(b)), method="m", baseline="b", metric="acc",
                   higher_is_better=True, **kw)


def test_zero_variance_interval_is_never_narrower_than_the_resolution():
    t = _cmp([1.0, 1.0, 1.0], [0.000957] * 3, kind="superiority", threshold=0.5, resolution=1 / 1000)
    assert t.ci_high - t.ci_low == pytest.approx(2 / 1000)
    assert t.verdict == REPRODUCED
    # two seeds one billionth apart are no evidence when a test item is worth 1/719
    tiny = _cmp([0.5 + 1e-9, 0.5 + 1e-9], [0.5, 0.5], kind="superiority", threshold=0.0, resolution=1 / 719)
    assert tiny.verdict == INCONCLUSIVE and tiny.ci_low < 0 < tiny.ci_high
    assert _cmp([0.5 + 1e-9] * 2, [0.5] * 2, kind="superiority", threshold=0.0).verdict == REPRODUCED


@pytest.mark.parametrize("field", ["min_effect", "margin"])
def test_negative_thresholds_are_refused(field):
    with pytest.raises(PriorlabError, match=field):
        Comparison("m", "b", kind="non-inferiority", **{field: -0.01})
    with pytest.raises(PriorlabError, match=field):
        Guard("ece", higher_is_better=False, **{field: -1.0})
    with pytest.raises(PriorlabError, match="kind"):
        Comparison("m", "b", kind="superior")


def test_unpaired_seeds_use_only_the_shared_ones():
    t = compare({0: 0.9, 1: 0.8, 2: 0.7}, {1: 0.5, 2: 0.5, 3: 0.1}, method="m", baseline="b",
                metric="acc", higher_is_better=True, kind="superiority", threshold=0.0)
    assert t.n == 2 and t.effect == pytest.approx(0.25)


def test_a_guard_decides_the_verdict():
    claim = _claim(guards=(Guard("ece", higher_is_better=False, kind="superiority", min_effect=0.05),))
    s = summarise(claim, _records({"base": [0.5, 0.51, 0.5], "m1": [0.6, 0.62, 0.61],
                                   "m2": [0.6, 0.6, 0.62]}), "full", 3)
    assert [t["verdict"] for t in s["comparisons"]] == [REPRODUCED, REPRODUCED]
    assert s["verdict"] == NOT_REPRODUCED  # equal ECE: the guard's superiority fails


def test_two_methods_sharing_a_reproduction_get_their_own_status():
    s = summarise(_claim(), _records({"base": [0.5, 0.51, 0.5], "m1": [0.6, 0.62, 0.61],
                                      "m2": [0.4, 0.41, 0.40]}), "full", 3)
    assert s["cards"] == {"m1-card": REPRODUCED, "m2-card": NOT_REPRODUCED}
    assert s["verdict"] == NOT_REPRODUCED


def test_negative_result_under_the_papers_budget_is_inconclusive():
    values = {"base": [0.5, 0.51, 0.5], "m1": [0.6, 0.62, 0.61], "m2": [0.4, 0.41, 0.40]}
    short = Budget("epochs", ours=4000, paper=80000)
    claim = _claim(comparisons=(_claim().comparisons[0],
                                dataclasses.replace(_claim().comparisons[1], budget=short)))
    s = summarise(claim, _records(values), "full", 3)
    assert s["cards"]["m2-card"] == ("inconclusive (under the paper's budget: ours 4,000 epochs, "
                                     "paper 80,000 epochs)")
    full = dataclasses.replace(claim, comparisons=_claim().comparisons, budget=Budget("epochs", 80000, 80000))
    assert summarise(full, _records(values), "full", 3)["cards"]["m2-card"] == NOT_REPRODUCED


def test_an_arm_tuned_at_its_grid_edge_makes_the_comparison_inconclusive():
    values = {"base": [0.5, 0.51, 0.5], "m1": [0.6, 0.62, 0.61], "m2": [0.6, 0.62, 0.61]}
    edge = {"m1": {"lr": {"grid": [1e-3, 3e-3, 1e-2], "selected": 1e-2}},
            "m2": {"lr": {"grid": [1e-3, 3e-3, 1e-2], "selected": 3e-3}}}
    s = summarise(_claim(), _records(values, tuning=edge), "full", 3)
    m1 = s["cards"]["m1-card"]
    assert m1.startswith(INCONCLUSIVE) and "grid edge in 3/3 seeds" in m1
    assert s["cards"]["m2-card"] == REPRODUCED


def test_interaction_effect_is_a_difference_of_differences():
    claim = _claim(arms=("a32", "l32", "a512", "l512"),
                   comparisons=(Comparison("l512", "a512", minus=("l32", "a32"), clause="grows"),),
                   clauses=("grows",))
    values = {"a32": [0.80, 0.81, 0.80], "l32": [0.80, 0.81, 0.81],
              "a512": [0.78, 0.79, 0.78], "l512": [0.80, 0.81, 0.80]}
    (t,) = summarise(claim, _records(values, resolution=1e-4), "full", 3)["comparisons"]
    assert t["effect"] == pytest.approx(((0.02 + 0.02 + 0.02) - (0.0 + 0.0 + 0.01)) / 3)
    assert t["label"] == "(l512 vs a512) - (l32 vs a32)"
    assert t["ci_high"] - t["effect"] >= 2e-4  # four values: twice the resolution


def test_every_clause_must_be_known_and_revisions_numbered():
    with pytest.raises(PriorlabError, match="clause"):
        _claim(untested=(Untested("a clause nobody declared", "why"),))
    with pytest.raises(PriorlabError, match="revisions"):
        _claim(revisions=(Revision(3, "skipped two"),))
    with pytest.raises(PriorlabError, match="revisions"):
        _claim(revisions=(Revision(2, " "),))
    assert _claim(revisions=(Revision(2, "why"),)).revision == 2


def test_budget_needs_positive_numbers():
    with pytest.raises(PriorlabError):
        Budget("epochs", ours=0, paper=10)
    assert not Budget("epochs", ours=10, paper=None).under and Budget("steps", 1, 2).under


def test_lock_freezes_the_declaration_until_a_revision_with_a_reason(tmp_path):
    claim = _claim()
    lock = register(claim, tmp_path, "abc")
    assert [h["revision"] for h in lock["history"]] == [1] and lock["history"][0]["results_existed"] is False
    assert read_lock(tmp_path, claim)["history"][0]["declaration"] == declaration(claim)
    changed = dataclasses.replace(claim, seeds={"smoke": 2, "full": 10})
    with pytest.raises(PriorlabError, match="full_seeds.*Revision\\(2"):
        register(changed, tmp_path, "abd")
    (tmp_path / claim.method / "full").mkdir(parents=True)
    (tmp_path / claim.method / "full" / "base__seed0.json").write_text("{}")
    revised = dataclasses.replace(changed, revisions=(Revision(2, "restore the declared seeds"),))
    lock = register(revised, tmp_path, "abe")
    assert [h["revision"] for h in lock["history"]] == [1, 2]
    assert lock["history"][1]["changed"] == ["full_seeds"] and lock["history"][1]["results_existed"]
    check(revised, read_lock(tmp_path, claim))
    with pytest.raises(PriorlabError, match="older"):
        check(claim, read_lock(tmp_path, claim))
    # the smoke tier checks plumbing: it may change without a revision
    smoke_changed = dataclasses.replace(revised, tiers={"smoke": {"x": 1}, "full": {"n": 1}})
    check(smoke_changed, read_lock(tmp_path, claim))


def test_corrupt_lock_is_named(tmp_path):
    claim = _claim()
    path = tmp_path / claim.method / "claim.lock.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff\xfe not json")
    with pytest.raises(PriorlabError, match="claim.lock.json"):
        read_lock(tmp_path, claim)


def test_infinite_interval_below_two_seeds_is_inconclusive():
    t = _cmp([0.9], [0.1], kind="superiority", threshold=0.0, resolution=0.01)
    assert t.verdict == INCONCLUSIVE and math.isinf(t.ci_high)
    assert json.dumps(t.as_dict())  # infinities become null, not invalid JSON


def test_a_bound_judges_one_arm_against_a_stated_bar():
    claim = _claim(bounds=(Bound("m1", "acc", bar=0.55, higher_is_better=True, min_effect=0.01,
                                 clause="m1 beats base"),))
    values = {"base": [0.5, 0.51, 0.5], "m1": [0.6, 0.62, 0.61], "m2": [0.6, 0.6, 0.62]}
    s = summarise(claim, _records(values), "full", 3)
    (bound,) = [t for t in s["comparisons"] if t["baseline"] == "bar 0.55"]
    assert bound["effect"] == pytest.approx(0.06) and bound["verdict"] == REPRODUCED
    assert "m1 > bar 0.55 (acc)" in s["clauses"][0]["tested_by"]
    high = _claim(bounds=(Bound("m1", "acc", bar=0.7, higher_is_better=True),))
    assert summarise(high, _records(values), "full", 3)["cards"]["m1-card"] == NOT_REPRODUCED
    with pytest.raises(PriorlabError, match="does not declare"):
        _claim(bounds=(Bound("nobody", "acc", bar=0.0, higher_is_better=True),))


def test_verdict_text_names_each_reason_once():
    from priorlab.harness.verdict import verdict_text
    a = compare({0: 1.0, 1: 1.0}, {0: 0.0, 1: 0.0}, method="m", baseline="b", metric="acc",
                higher_is_better=True, kind="superiority", threshold=0.0, grid_edge="x at edge; y at edge")
    b = dataclasses.replace(a, reason="y at edge")
    assert verdict_text(INCONCLUSIVE, [a, b]) == "inconclusive (x at edge; y at edge)"
