"""The harness: verdict rule, caching, resume, stale/corrupt files, report regeneration."""

import json
import math
import sys
import types

import pytest
import torch

from priorlab import registry
from priorlab.cli import main
from priorlab.errors import PriorlabError
from priorlab.harness.claim import Claim, Comparison, Guard, RunOutput
from priorlab.harness.report import write_report
from priorlab.harness.runner import load_results, run_reproductions
from priorlab.harness.summary import summarise
from priorlab.harness.verdict import (INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, combine, compare,
                                      paired_interval)

# ---- the verdict rule on synthetic numbers ------------------------------------------------


def _cmp(method, baseline, kind="superiority", threshold=0.0, higher=True):
    return compare(dict(enumerate(method)), dict(enumerate(baseline)), method="m", baseline="b",
                   metric="acc", higher_is_better=higher, kind=kind, threshold=threshold)


def test_paired_interval_known_value():
    mean, lo, hi = paired_interval([1.0, 2.0, 3.0])
    # t_{0.975, 2} = 4.302653; sd = 1; half-width = 4.302653 / sqrt(3)
    assert mean == 2.0
    assert hi - mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert mean - lo == pytest.approx(hi - mean)


def test_superiority_reproduced_not_reproduced_inconclusive():
    base = [0.50, 0.52, 0.51, 0.49, 0.50]
    assert _cmp([0.60, 0.63, 0.61, 0.60, 0.62], base, threshold=0.05).verdict == REPRODUCED
    # clear effect but below the declared minimum: the whole interval lies under 0.2
    assert _cmp([0.60, 0.63, 0.61, 0.60, 0.62], base, threshold=0.2).verdict == NOT_REPRODUCED
    # noisy effect straddling zero and the minimum
    assert _cmp([0.70, 0.40, 0.65, 0.35, 0.60], base, threshold=0.05).verdict == INCONCLUSIVE


def test_lower_is_better_flips_the_sign():
    t = _cmp([0.1, 0.11, 0.12], [0.3, 0.31, 0.33], higher=False, threshold=0.1)
    assert t.effect == pytest.approx(0.2033333, rel=1e-5)
    assert t.verdict == REPRODUCED


def test_non_inferiority():
    base = [0.80, 0.81, 0.79, 0.80]
    assert _cmp([0.795, 0.805, 0.79, 0.80], base, "non-inferiority", 0.02).verdict == REPRODUCED
    assert _cmp([0.70, 0.71, 0.69, 0.70], base, "non-inferiority", 0.02).verdict == NOT_REPRODUCED
    assert _cmp([0.90, 0.70, 0.85, 0.72], base, "non-inferiority", 0.02).verdict == INCONCLUSIVE


def test_single_seed_is_inconclusive_and_combine():
    assert _cmp([0.9], [0.1], threshold=0.1).verdict == INCONCLUSIVE
    assert combine([REPRODUCED, REPRODUCED]) == REPRODUCED
    assert combine([REPRODUCED, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine([REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE]) == NOT_REPRODUCED
    assert combine([]) == INCONCLUSIVE


def test_claim_referencing_a_missing_arm_is_refused():
    with pytest.raises(PriorlabError, match="does not declare"):
        Claim(seed_id=0, method="x", statement="", setting={}, metric="m", higher_is_better=True,
              arms=("a", "b"), comparisons=(Comparison("c", "a"),),
              tiers={"smoke": {}, "full": {}}, seeds={"smoke": 2, "full": 3})

# ---- a fake reproduction registered for the duration of a test ------------------------------


@pytest.fixture
def fake():
    calls = []
    module = types.ModuleType("priorlab.reproductions.ptest_fake")
    module.CLAIM = Claim(
        seed_id=0, method="fake-method", statement="method beats baseline", setting={"smoke": "toy"},
        metric="acc", higher_is_better=True, arms=("baseline", "method"),
        comparisons=(Comparison("method", "baseline", "superiority", min_effect=0.05),),
        guards=(Guard("ece", higher_is_better=False, kind="non-inferiority", margin=0.01),),
        tiers={"smoke": {"size": 3}, "full": {"size": 10}}, seeds={"smoke": 3, "full": 3},
        curves=("loss",))
    state = {"interrupt_at": None}

    def run(arm, cfg, seed):
        if state["interrupt_at"] is not None and len(calls) == state["interrupt_at"]:
            raise KeyboardInterrupt
        calls.append((arm, seed))
        acc = 0.5 + (0.2 if arm == "method" else 0.0) + 0.01 * seed
        return RunOutput({"acc": acc, "ece": 0.1 - 0.001 * seed},
                         {"loss": {"x": [1, 2, 3], "y": [1.0, 0.5, 0.25 + 0.01 * seed]}})

    module.run = run
    card = registry.MethodCard(
        id="fake-method", name="Fake", family="test", kind="function",
        paper=registry.Paper("A fake paper", "A. Author et al.", "Nowhere", 2026, "0000.00000", "",
                             "no official code", 0),
        summary="s", usage="pass", hyperparameters="", deviations="", claim_scope="",
        reproduction="ptest_fake")
    sys.modules[module.__name__] = module
    registry.register(card)
    yield types.SimpleNamespace(card=card, calls=calls, state=state, module=module)
    del registry._CARDS[card.id]
    del sys.modules[module.__name__]


def test_cache_redoes_nothing_finished(fake, tmp_path):
    run_reproductions([fake.card], tier="smoke", results=tmp_path)
    assert len(fake.calls) == 6
    run_reproductions([fake.card], tier="smoke", results=tmp_path)
    assert len(fake.calls) == 6
    claim, records = load_results(fake.card, "smoke", tmp_path)
    s = summarise(claim, records, "smoke", 3)
    assert s["verdict"] == "pipeline ok"  # the smoke tier judges nothing
    assert {t["verdict"] for t in s["comparisons"] + s["guards"]} == {"not judged (smoke tier)"}
    assert s["effect"] == pytest.approx(0.2)
    run_reproductions([fake.card], tier="full", results=tmp_path)
    claim, records = load_results(fake.card, "full", tmp_path)
    assert summarise(claim, records, "full", 3)["verdict"] == REPRODUCED
    assert {"git_commit", "versions", "config", "seed", "wall_time_s"} <= set(records[0])


def test_resume_after_interrupt_keeps_finished_runs(fake, tmp_path):
    fake.state["interrupt_at"] = 4
    with pytest.raises(KeyboardInterrupt):
        run_reproductions([fake.card], tier="smoke", results=tmp_path)
    assert len(list(tmp_path.rglob("*.json"))) == 4
    fake.state["interrupt_at"] = None
    run_reproductions([fake.card], tier="smoke", results=tmp_path)
    assert len(fake.calls) == 6  # only the two unfinished runs were redone
    assert not list(tmp_path.rglob("*.tmp"))


def test_corrupt_and_foreign_results_are_named(fake, tmp_path):
    run_reproductions([fake.card], tier="smoke", results=tmp_path)
    path = tmp_path / "fake-method" / "smoke" / "method__seed1.json"
    path.write_text("{not json")
    with pytest.raises(PriorlabError, match="corrupt"):
        run_reproductions([fake.card], tier="smoke", results=tmp_path)
    run_reproductions([fake.card], tier="smoke", results=tmp_path, force=True)
    record = json.loads(path.read_text())
    record["config_hash"] = "0" * 16
    path.write_text(json.dumps(record))
    with pytest.raises(PriorlabError, match="another claim revision"):
        run_reproductions([fake.card], tier="smoke", results=tmp_path)
    record["config_hash"], record["config"] = json.loads(
        (tmp_path / "fake-method" / "smoke" / "method__seed0.json").read_text())["config_hash"], {"size": 4}
    path.write_text(json.dumps(record))
    with pytest.raises(PriorlabError, match="another config"):  # the stored hash is not trusted
        run_reproductions([fake.card], tier="smoke", results=tmp_path)


def test_report_regenerates_byte_for_byte(fake, tmp_path):
    results = tmp_path / "results"
    run_reproductions([fake.card], tier="smoke", results=results)
    md, page, summaries = write_report(results, tmp_path)
    first = (md.read_bytes(), page.read_bytes())
    write_report(results, tmp_path)
    assert (md.read_bytes(), page.read_bytes()) == first
    text = md.read_text()
    assert "pipeline ok" in text and "method vs baseline" in text
    sections = text.split("\n## ", 1)[1]  # the intro explains the rule; the results judge nothing
    assert "reproduced" not in sections and "inconclusive" not in sections
    assert (results / "plots" / "fake-method_smoke.png").stat().st_size > 1000


def test_cli_json_and_errors(fake, tmp_path, capsys):
    assert main(["-q", "reproduce", "fake-method", "--results", str(tmp_path), "--json"]) == 0
    (summary,) = json.loads(capsys.readouterr().out)
    for key in ("seed_id", "claim", "metric", "higher_is_better", "tier", "values", "effect",
                "ci_low", "ci_high", "verdict"):
        assert key in summary
    assert set(summary["values"]) == {"baseline", "method"}
    assert main(["info", "fake-methd"]) == 2
    assert "did you mean 'fake-method'" in capsys.readouterr().err
    assert main(["reproduce"]) == 2


def test_tier_arms_limit_what_runs_and_what_is_compared(fake, tmp_path):
    import dataclasses
    fake.module.CLAIM = dataclasses.replace(
        fake.module.CLAIM, arms=("baseline", "method", "real_baseline", "real_method"),
        comparisons=fake.module.CLAIM.comparisons + (Comparison("real_method", "real_baseline"),),
        tier_arms={"smoke": ("baseline", "method")})
    run_reproductions([fake.card], tier="smoke", results=tmp_path)
    assert {arm for arm, _ in fake.calls} == {"baseline", "method"}
    claim, records = load_results(fake.card, "smoke", tmp_path)
    summary = summarise(claim, records, "smoke", 3)
    assert [c["method"] for c in summary["comparisons"]] == ["method"]
    with pytest.raises(PriorlabError, match="no comparison"):
        dataclasses.replace(fake.module.CLAIM, tier_arms={"smoke": ("baseline", "real_method")})


def test_scheduler_step_runs_per_step_or_per_epoch_and_shuffled_batches_cover_once():
    from priorlab.train import SchedulerStep, fit, shuffled_batches
    for every, expected in (("step", 6), ("epoch", 2)):
        model = torch.nn.Linear(2, 2)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0)
        batch = (torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))
        fit(model, [batch] * 3, opt, torch.nn.functional.cross_entropy, epochs=2,
            adapters=[SchedulerStep(sched, every=every)], show_progress=False)
        assert sched.last_epoch == expected
    with pytest.raises(PriorlabError, match="every"):
        SchedulerStep(sched, every="batch")
    gen = torch.Generator().manual_seed(0)
    batches = shuffled_batches(10, 4, gen)
    assert [len(b) for b in batches] == [4, 4, 2] and sorted(torch.cat(batches).tolist()) == list(range(10))
    assert [len(b) for b in shuffled_batches(10, 4, gen, drop_last=True)] == [4, 4]


def test_replication_on_fresh_seeds_runs_apart_and_prints_both_verdicts(fake, tmp_path, capsys,
                                                                         monkeypatch):
    monkeypatch.setenv("PRIORLAB_RESULTS", str(tmp_path / "committed"))
    assert main(["-q", "reproduce", "fake-method", "--tier", "full", "--results",
                 str(tmp_path / "committed")]) == 0
    capsys.readouterr()
    assert main(["-q", "reproduce", "fake-method", "--tier", "full", "--seed-start", "10",
                 "--results", str(tmp_path / "replica")]) == 0
    out = capsys.readouterr().out
    seeds = sorted(int(p.stem.rsplit("seed", 1)[1]) for p in (tmp_path / "replica").rglob("*__seed*.json"))
    assert seeds == [10, 10, 11, 11, 12, 12]
    assert "(seeds 10..)" in out and "committed full tier: reproduced" in out and "agrees" in out
    assert fake.calls.count(("method", 10)) == 1


@pytest.mark.parametrize("mutation", ["non_utf8", "null_metric", "string_metric", "nan_metric", "bool_seed"])
def test_result_reader_refuses_what_the_writer_never_writes(fake, tmp_path, mutation):
    run_reproductions([fake.card], tier="smoke", results=tmp_path)
    path = tmp_path / "fake-method" / "smoke" / "method__seed1.json"
    record = json.loads(path.read_text())
    if mutation == "non_utf8":
        path.write_bytes(b'{"metrics": "\xff\xfe"}')
    else:
        bad = {"null_metric": None, "string_metric": "0.9", "nan_metric": float("nan")}
        record["metrics"]["acc"] = bad.get(mutation, record["metrics"]["acc"])
        if mutation == "bool_seed":
            record["seed"] = True
        path.write_text(json.dumps(record))
    with pytest.raises(PriorlabError, match=str(path.name)):
        load_results(fake.card, "smoke", tmp_path)


def test_extra_files_and_foreign_folders_do_not_change_the_report(fake, tmp_path, capsys):
    run_reproductions([fake.card], tier="smoke", results=tmp_path)
    extra = tmp_path / "fake-method" / "smoke" / "method__seed7.json"
    extra.write_text((tmp_path / "fake-method" / "smoke" / "method__seed0.json").read_text())
    (tmp_path / "not-a-method" / "full").mkdir(parents=True)
    (tmp_path / "not-a-method" / "full" / "x__seed0.json").write_text("{}")
    md, _, summaries = write_report(tmp_path, tmp_path / "out")
    assert [s["runs"] for s in summaries] == [6] and "Runs: 6/6" in md.read_text()
    assert "not-a-method" in capsys.readouterr().err
