"""A wheel-installed copy (not editable) lists the committed verdicts from its packaged evidence.

The wheel is built from a copy of the sources (the checkout is left untouched) and installed
with ``--no-deps`` into a fresh virtual environment that reuses this environment's packages
(torch is never reinstalled, nothing is downloaded).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done


def test_wheel_install_lists_committed_verdicts(tmp_path):
    packaged = REPO / "src" / "priorlab" / "evidence.json"
    if not packaged.is_file():
        pytest.skip("no src/priorlab/evidence.json: run `priorlab report` first")
    evidence = json.loads(packaged.read_text())
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(tmp_path / "dist"), str(source)])
    wheel = next((tmp_path / "dist").glob("priorlab-*.whl"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    target = Path(_run([python, "-c", purelib]).stdout.strip())
    # this environment's packages (torch, numpy, ...) behind the new one's; its .pth files
    # (the editable priorlab) are not processed, so priorlab can only come from the wheel
    (target / "reuse_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
          "--no-deps", "--no-index", str(wheel)])
    work = tmp_path / "work"  # a working folder without results/
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PRIORLAB_RESULTS"}
    where = _run([python, "-c", "import priorlab; print(priorlab.__file__)"], cwd=work, env=env)
    assert Path(where.stdout.strip()).is_relative_to(venv)
    table = _run([venv / "bin" / "priorlab", "list"], cwd=work, env=env).stdout
    expected = {card: verdict for m in evidence["methods"].values() for card, verdict in m["cards"].items()}
    # rows are "seed  id  name  family  kind  reproduction": the verdict closes the card's row
    shown = {line.split()[1]: line.rstrip() for line in table.splitlines() if len(line.split()) > 1}
    assert expected and all(shown[card].endswith(verdict) for card, verdict in expected.items()), table
    assert "full report:" in table
