"""One committed full-tier run, rerun from the committed code, gives the committed numbers.

Exact on the CPU and BLAS that produced the file (single-threaded runs are deterministic there);
within 1e-9 relative elsewhere, where BLAS kernels may round differently in the last bits.
"""

import json
import math

import pytest

from priorlab.cli import committed_results
from priorlab.harness.provenance import environment
from priorlab.harness.runner import Job, config_hash, execute, run_path
from priorlab.registry import get

METHOD, ARM, SEED = "predictive-alignment", "trained", 0  # ~1 s per run


def test_a_committed_full_tier_run_reproduces(tmp_path):
    card = get(METHOD)
    from priorlab.harness.runner import claim_of
    claim = claim_of(card)
    committed = run_path(committed_results(), claim, "full", ARM, SEED)
    if not committed.exists():
        pytest.skip(f"no committed result {committed}")
    stored = json.loads(committed.read_text())
    job = Job(card.reproduction, ARM, "full", SEED, claim.tiers["full"],
              config_hash(claim, ARM, "full", SEED), tmp_path / "rerun.json")
    assert job.config_hash == stored["config_hash"], "the committed result is stale: rerun the full tier"
    fresh = execute(job)
    same_machine = all(stored["versions"].get(k) == environment()[k]
                       for k in ("cpu", "blas", "torch", "numpy"))
    for name, value in stored["metrics"].items():
        if same_machine:
            assert fresh["metrics"][name] == value, name
        else:
            assert math.isclose(fresh["metrics"][name], value, rel_tol=1e-9, abs_tol=1e-12), name
