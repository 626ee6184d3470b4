"""The README's scene-flow table is generated from the committed real-data benchmark, never typed."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_readme_sceneflow_table_matches_the_committed_benchmark():
    table = subprocess.run([sys.executable, "benchmarks/bench_sceneflow_real.py", "--table"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.strip()
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- sceneflow-table -->")[1].split("<!-- /sceneflow-table -->")[0].strip()
    assert block == table, ("README's scene-flow table is stale: paste the output of "
                            "`python benchmarks/bench_sceneflow_real.py --table`")
