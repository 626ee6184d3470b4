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
