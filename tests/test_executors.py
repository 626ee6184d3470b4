"""Executors (local pool, Ray), exploratory ``--set`` runs and ``--tensorboard`` curves.

The Ray tests start an embedded Ray with 2 CPUs and skip when Ray is not installed. Ray workers
are separate processes, so the fake reproduction lives in a file they import (through a worker
setup hook), not only in this process's ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from priorlab import registry
from priorlab.cli import main, parse_overrides
from priorlab.errors import PriorlabError
from priorlab.harness.executors import RunsFailed
from priorlab.harness.registration import LOCK_NAME
from priorlab.harness.runner import load_results, run_reproductions

FAKE_MODULE = "ptest_exec_fake"
FAKE_SOURCE = '''
from priorlab.harness.claim import Claim, Comparison, RunOutput

CLAIM = Claim(
    seed_id=0, method="fake-exec", statement="method beats baseline", setting={"smoke": "toy"},
    metric="acc", higher_is_better=True, arms=("baseline", "method"),
    comparisons=(Comparison("method", "baseline", "superiority", min_effect=0.05),),
    tiers={"smoke": {"size": 3, "fail_seed": -1}, "full": {"size": 10, "fail_seed": -1}},
    seeds={"smoke": 3, "full": 3}, curves=("loss",))


def run(arm, cfg, seed):
    if arm == "method" and seed == cfg["fail_seed"]:
        raise RuntimeError(f"fake failure in method seed {seed}")
    acc = 0.5 + (0.2 if arm == "method" else 0.0) + 0.001 * seed * cfg["size"]
    return RunOutput({"acc": acc}, {"loss": {"x": [1, 2, 3], "y": [1.0, 0.5, 0.25 + 0.01 * seed]}})
'''
SETUP_SOURCE = f'''
import sys


def alias():
    """Make the fake importable under the name the runner imports (in every Ray worker)."""
    import priorlab.reproductions  # noqa: F401
    import {FAKE_MODULE}
    sys.modules["priorlab.reproductions.{FAKE_MODULE}"] = {FAKE_MODULE}
'''
STABLE = ("seed_id", "method", "arm", "tier", "seed", "config", "config_hash", "metrics", "curves",
          "info", "resolution", "tuning", "exploratory")


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fake_reproduction")
    (folder / f"{FAKE_MODULE}.py").write_text(FAKE_SOURCE)
    (folder / "ptest_exec_setup.py").write_text(SETUP_SOURCE)
    sys.path.insert(0, str(folder))
    import ptest_exec_setup

    ptest_exec_setup.alias()
    card = registry.MethodCard(
        id="fake-exec", name="Fake", family="test", kind="function",
        paper=registry.Paper("A fake paper", "A. Author et al.", "Nowhere", 2026, "0000.00000", "",
                             "no official code", 0),
        summary="s", usage="pass", hyperparameters="", deviations="", claim_scope="",
        reproduction=FAKE_MODULE)
    registry.register(card)
    yield folder
    del registry._CARDS[card.id]
    for name in (f"priorlab.reproductions.{FAKE_MODULE}", FAKE_MODULE, "ptest_exec_setup"):
        sys.modules.pop(name, None)
    sys.path.remove(str(folder))


@pytest.fixture
def fake(fake_dir):
    return registry.get("fake-exec")


@pytest.fixture(scope="module")
def embedded_ray(fake_dir):
    """One embedded Ray (2 CPUs) for the module, its workers able to import the fake."""
    ray = pytest.importorskip("ray")
    import logging

    path = os.pathsep.join([str(fake_dir), *sys.path[1:]])
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path},
                          "worker_process_setup_hook": "ptest_exec_setup.alias"})
    yield ray
    ray.shutdown()


def stored(results: Path) -> dict:
    """Every result file under ``results``: its stable fields (not timings or versions)."""
    out = {}
    for path in sorted(Path(results).rglob("*__seed*.json")):
        record = json.loads(path.read_text())
        out[str(path.relative_to(results))] = {k: record.get(k) for k in STABLE}
    return out


# ---- Ray ---------------------------------------------------------------------------------------


def test_real_smoke_tier_on_ray_equals_two_local_jobs(tmp_path, capsys):
    ray = pytest.importorskip("ray")
    started_here = not ray.is_initialized()  # first in the file: the command starts Ray itself
    assert main(["-q", "reproduce", "att-svm", "--jobs", "2", "--results", str(tmp_path / "pool")]) == 0
    assert main(["-q", "reproduce", "att-svm", "--executor", "ray",
                 "--results", str(tmp_path / "ray")]) == 0
    pool, on_ray = stored(tmp_path / "pool"), stored(tmp_path / "ray")
    assert len(pool) >= 4 and pool == on_ray
    assert capsys.readouterr().out.count("att-svm") == 2
    assert not (started_here and ray.is_initialized())  # the embedded Ray it started is stopped


def test_ray_equals_local_and_the_cache_holds(fake, embedded_ray, tmp_path):
    run_reproductions([fake], tier="smoke", results=tmp_path / "local")
    run_reproductions([fake], tier="smoke", results=tmp_path / "ray", executor="ray")
    local, on_ray = stored(tmp_path / "local"), stored(tmp_path / "ray")
    assert len(local) == 6 and local == on_ray
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").rglob("*.json")}
    run_reproductions([fake], tier="smoke", results=tmp_path / "ray", executor="ray")  # redoes nothing
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").rglob("*.json")} == stamps
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("executor", ["ray", "local"])
def test_a_failed_run_is_reported_and_the_others_finish(fake, tmp_path, capsys, request, executor):
    if executor == "ray":
        request.getfixturevalue("embedded_ray")
    with pytest.raises(RunsFailed, match="1 run.*failed.*ptest_exec_fake:method:seed1") as caught:
        run_reproductions([fake], tier="smoke", results=tmp_path, executor=executor,
                          overrides={"fail_seed": 1})
    assert [f.name for f in caught.value.failures] == ["ptest_exec_fake:method:seed1"]
    assert "fake failure in method seed 1" in caught.value.failures[0].traceback
    err = capsys.readouterr().err
    assert "run ptest_exec_fake:method:seed1 failed" in err and "fake failure in method seed 1" in err
    assert f"{FAKE_MODULE}.py" in err  # the traceback reaches the failing line
    names = sorted(p.name for p in tmp_path.rglob("*__seed*.json"))
    assert len(names) == 5 and "method__seed1.json" not in names


def test_the_command_summarises_the_finished_runs_then_exits_1_naming_the_failed(fake, tmp_path, capsys):
    args = ["-q", "reproduce", "fake-exec", "--set", "fail_seed=0", "--results", str(tmp_path)]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "exploratory: not a verdict" in captured.out
    assert "1 run(s) failed" in captured.err and "ptest_exec_fake:method:seed0" in captured.err
    assert len(list(tmp_path.rglob("*__seed*.json"))) == 5


def test_ray_missing_gives_the_install_hint(fake, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails
    with pytest.raises(PriorlabError, match=r"pip install 'priorlab\[ray\]'"):
        run_reproductions([fake], tier="smoke", results=tmp_path, executor="ray")
    assert not list(tmp_path.rglob("*.json"))


def test_bad_executor_options_are_refused(fake, tmp_path, capsys):
    assert main(["reproduce", "fake-exec", "--address", "auto", "--results", str(tmp_path)]) == 2
    assert "--address needs --executor ray" in capsys.readouterr().err
    with pytest.raises(PriorlabError, match="did you mean 'ray'"):
        run_reproductions([fake], tier="smoke", results=tmp_path, executor="rey")


# ---- exploratory --set -------------------------------------------------------------------------


def test_set_values_are_json_or_strings():
    assert parse_overrides(["a=1", "b=[1, 2]", "c=x y", "d=true", "e=0.5", "f="]) == {
        "a": 1, "b": [1, 2], "c": "x y", "d": True, "e": 0.5, "f": ""}
    with pytest.raises(PriorlabError, match="key=value"):
        parse_overrides(["size"])


def test_exploratory_runs_are_apart_and_never_a_verdict(fake, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "reproduce", "fake-exec", "--tier", "full", "--set", "size=5"]) == 0
    out = capsys.readouterr().out
    assert "exploratory: not a verdict" in out and "reproduced" not in out and "->" not in out
    files = sorted((tmp_path / "runs" / "explore" / "fake-exec").rglob("*__seed*.json"))
    assert len(files) == 6
    record = json.loads(files[0].read_text())
    assert record["exploratory"] == {"overrides": {"size": 5}} and record["config"]["size"] == 5
    assert not list(tmp_path.rglob(LOCK_NAME))  # the claim lock is never registered nor touched

    assert main(["-q", "reproduce", "fake-exec", "--tier", "full", "--set", "size=5", "--json"]) == 0
    (summary,) = json.loads(capsys.readouterr().out)
    assert summary["status"] == "exploratory: not a verdict" and summary["verdict"] is None
    assert all(t["verdict"] is None for t in summary["comparisons"])
    assert summary["exploratory"] == {"overrides": {"size": 5}} and summary["runs"] == 6

    other = sorted((tmp_path / "runs" / "explore" / "fake-exec").iterdir())
    assert main(["-q", "reproduce", "fake-exec", "--set", "size=7"]) == 0  # another folder
    assert len(sorted((tmp_path / "runs" / "explore" / "fake-exec").iterdir())) == len(other) + 1

    plain = tmp_path / "plain" / "fake-exec" / "full"  # a plan without overrides refuses it
    plain.mkdir(parents=True)
    (plain / files[0].name).write_text(files[0].read_text())
    with pytest.raises(PriorlabError, match="exploratory"):
        load_results(fake, "full", tmp_path / "plain")


def test_set_refuses_an_unknown_key_with_a_suggestion(fake, tmp_path, capsys):
    assert main(["reproduce", "fake-exec", "--set", "sise=5", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown config key" in err and "did you mean 'size'" in err
    assert not list(tmp_path.rglob("*.json"))


# ---- TensorBoard -------------------------------------------------------------------------------


def test_tensorboard_curves_read_back_for_new_and_cached_runs(fake, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    args = ["-q", "reproduce", "fake-exec", "--results", str(tmp_path / "res"),
            "--tensorboard", str(tmp_path / "tb")]
    for _ in range(2):  # the second time every run is cached; the curves are rewritten, not doubled
        assert main(args) == 0
        folder = tmp_path / "tb" / "fake-exec" / "smoke" / "method__seed2"
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1
        events = event_accumulator.EventAccumulator(str(folder))
        events.Reload()
        points = events.Scalars("loss")
        assert [p.step for p in points] == [1, 2, 3]
        assert [p.value for p in points] == pytest.approx([1.0, 0.5, 0.27])
    assert len(list((tmp_path / "tb" / "fake-exec" / "smoke").iterdir())) == 6
