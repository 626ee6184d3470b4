"""The command line as a user meets it: list, info, errors, and the README kept in step."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from priorlab.cli import main
from priorlab.registry import all_cards

REPO = Path(__file__).resolve().parents[1]


def test_list_json_has_the_documented_keys(capsys):
    assert main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["id"] for r in rows} == {c.id for c in all_cards()}
    for row in rows:
        assert {"id", "seed_id", "name", "title", "family", "kind", "arxiv", "code_url"} <= set(row)


def test_list_pattern_filters(capsys):
    assert main(["list", "lio*"]) == 0
    out = capsys.readouterr().out
    assert "lion" in out and "elr" not in out


@pytest.mark.parametrize("key", ["65", "lion"])
def test_info_by_seed_id_or_slug(key, capsys):
    assert main(["info", key]) == 0
    out = capsys.readouterr().out
    for field in ("paper:", "official code:", "hyperparameters:", "deviations:",
                  "where the claim holds:", "use it:", "reproduction:"):
        assert field in out


def test_unknown_id_gets_one_line_with_a_suggestion(capsys):
    assert main(["info", "lino"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean 'lion'" in err
    assert main(["reproduce", "nsfpp"]) == 2
    assert "did you mean 'nsfp'" in capsys.readouterr().err


def test_readme_methods_table_is_generated_from_the_cards():
    env = dict(os.environ, PRIORLAB_QUIET="1")
    table = subprocess.run([sys.executable, "-m", "priorlab.cli", "list", "--markdown"], cwd=REPO,
                           capture_output=True, text=True, check=True, env=env).stdout.strip()
    assert table in (REPO / "README.md").read_text(), (
        "README's methods table is stale: paste the output of `priorlab list --markdown`")


def test_readme_component_snippet_runs():
    import re
    text = (REPO / "README.md").read_text()
    block = re.search(r"```python\n(import torch\nfrom priorlab\.optim.*?)```", text, re.S)
    assert block, "README lost its runnable components snippet"
    exec(compile(block.group(1), "<README components snippet>", "exec"), {})
    factory = re.search(r"```python\n(import priorlab, torch\n.*?)```", text, re.S)
    assert factory, "README lost its name-factory snippet"
    exec(compile(factory.group(1), "<README factory snippet>", "exec"), {})


def _cli(*args, cwd, env=None):
    env = dict(os.environ, **(env or {}))
    env.pop("PRIORLAB_RESULTS", None)
    return subprocess.run([sys.executable, "-m", "priorlab.cli", *args], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=300)


def test_list_and_info_show_the_committed_verdicts_from_any_directory(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "garbage.json").write_text("\xff")  # a user's own corrupt ./results
    here = json.loads(_cli("list", "--json", cwd=REPO).stdout)
    elsewhere = json.loads(_cli("list", "--json", cwd=tmp_path).stdout)
    assert here == elsewhere
    assert any(row["status"] not in ("not run", "no reproduction") for row in elsewhere)
    info = _cli("info", "65", cwd=tmp_path)
    assert info.returncode == 0 and "verdict (committed results): not run" not in info.stdout


def test_a_paper_with_two_methods_reproduces_by_its_seed_id_and_smoke_judges_nothing(tmp_path):
    out = _cli("reproduce", "62", "--results", str(tmp_path), cwd=REPO, env={"PRIORLAB_QUIET": "1"})
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.strip().splitlines()
    assert "pipeline ok" in line and "committed full tier:" in line
    smoke_part = line.split("|")[0]
    for word in ("reproduced", "inconclusive"):
        assert word not in smoke_part
    assert sorted(p.name for p in tmp_path.glob("*/smoke")) == ["smoke"]


def test_cli_errors_are_one_line_with_exit_codes(tmp_path):
    bad = _cli("report", "--results", str(tmp_path / "nonexistent"), cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "does not exist" in bad.stderr
    usage = _cli("info", "ELRR", cwd=tmp_path)
    assert usage.returncode == 2 and "did you mean 'elr'" in usage.stderr
    assert "Traceback" not in bad.stderr + usage.stderr
    debug = _cli("--debug", "report", "--results", str(tmp_path / "nonexistent"), cwd=tmp_path)
    assert "Traceback" in debug.stderr


def test_priorlab_quiet_env_silences_progress():
    code = ("import priorlab.progress as p; from priorlab.cli import main; main(['list', 'zz-none']); "
            "print(p.is_quiet())")
    env = dict(os.environ, PRIORLAB_QUIET="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip().endswith("True")  # parsing without -q keeps the environment's choice
