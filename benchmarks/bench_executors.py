"""Ray executor vs the local process pool on 20 jobs of ~1 s each.

    python benchmarks/bench_executors.py [--quick]

This file is also the fake reproduction it runs: two arms x 10 seeds whose ``run`` sleeps 1 s
(sleeping, not computing, so that the numbers measure the executors rather than the load of a
shared machine). It registers itself as ``priorlab.reproductions.bench_executors`` in every
process: spawned pool workers import it as ``__mp_main__``, Ray workers through a worker set-up
hook. Both executors get 2 slots (``--jobs 2``; an embedded Ray with 2 CPUs), so the ideal
wall time is 10 s. The embedded Ray is started before the timed run and its start-up is reported
separately; the pool's wall time includes spawning its workers, as a user pays it. Repetitions are
interleaved; medians are compared. Target: Ray's wall time (without start-up) within 10 % of the
pool's. Writes benchmarks/results/executors.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from priorlab.harness.claim import Claim, Comparison, RunOutput

MODULE = "bench_executors"
sys.modules.setdefault(f"priorlab.reproductions.{MODULE}", sys.modules[__name__])

RESULTS = Path(__file__).resolve().parent / "results" / "executors.json"
SEEDS, SLOTS = 10, 2
CLAIM = Claim(
    seed_id=0, method="bench-executors", statement="method beats baseline", setting={"smoke": "sleep"},
    metric="acc", higher_is_better=True, arms=("baseline", "method"),
    comparisons=(Comparison("method", "baseline", "superiority", min_effect=0.05),),
    tiers={"smoke": {"seconds": 1.0}, "full": {"seconds": 1.0}}, seeds={"smoke": SEEDS, "full": SEEDS})


def run(arm, cfg, seed):
    time.sleep(cfg["seconds"])
    return RunOutput({"acc": 0.5 + (0.2 if arm == "method" else 0.0) + 0.001 * seed})


def alias():
    """Ray's worker set-up hook: importing this module already registered it."""


def card():
    from priorlab import registry

    return registry.MethodCard(
        id="bench-executors", name="Executor benchmark", family="benchmark", kind="function",
        paper=registry.Paper("None", "None", "None", 2026, "0000.00000", "", "none", 0),
        summary="a fake reproduction that sleeps", usage="pass", hyperparameters="", deviations="",
        claim_scope="", reproduction=MODULE)


def timed_run(fake, executor: str) -> float:
    from priorlab.harness.runner import run_reproductions

    with tempfile.TemporaryDirectory() as results:
        start = time.perf_counter()
        run_reproductions([fake], tier="smoke", results=Path(results), jobs=SLOTS, executor=executor)
        elapsed = time.perf_counter() - start
        stored = list(Path(results).rglob("*__seed*.json"))
    if len(stored) != 2 * SEEDS:
        raise RuntimeError(f"{executor}: {len(stored)} result files, expected {2 * SEEDS}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repetition")
    args = parser.parse_args()
    reps = 1 if args.quick else 3
    import ray

    from priorlab import registry
    from priorlab.progress import set_quiet

    set_quiet(True)
    registry.register(card())
    fake = registry.get("bench-executors")
    path = os.pathsep.join(p for p in sys.path if p)  # sys.path[0] is this file's folder
    times: dict[str, list[float]] = {"pool": [], "ray": [], "ray_startup": []}
    for _ in range(reps):
        times["pool"].append(timed_run(fake, "local"))
        start = time.perf_counter()
        ray.init(num_cpus=SLOTS, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path},
                              "worker_process_setup_hook": f"{MODULE}.alias"})
        times["ray_startup"].append(time.perf_counter() - start)
        try:
            times["ray"].append(timed_run(fake, "ray"))
        finally:
            ray.shutdown()

    n_jobs, ideal = 2 * SEEDS, 2 * SEEDS * CLAIM.tiers["smoke"]["seconds"] / SLOTS
    median = {name: statistics.median(t) for name, t in times.items()}
    per_job = {name: (median[name] - ideal) * SLOTS / n_jobs for name in ("pool", "ray")}
    ratio = median["ray"] / median["pool"]
    result = {"jobs": n_jobs, "job_seconds": CLAIM.tiers["smoke"]["seconds"], "slots": SLOTS, "reps": reps,
              "ideal_wall_s": ideal, "median_wall_s": median, "all_reps_s": times,
              "overhead_per_job_s": per_job, "ray_over_pool": ratio,
              "ray_with_startup_over_pool": (median["ray"] + median["ray_startup"]) / median["pool"],
              "target": "ray_over_pool <= 1.10 (Ray start-up reported separately)",
              "target_met": ratio <= 1.10, "quick": args.quick}
    print(f"ideal           {ideal:7.2f} s  ({n_jobs} jobs x {result['job_seconds']} s on {SLOTS} slots)")
    print(f"local pool      {median['pool']:7.2f} s  ({per_job['pool'] * 1e3:6.1f} ms overhead per job)")
    print(f"ray             {median['ray']:7.2f} s  ({per_job['ray'] * 1e3:6.1f} ms overhead per job)")
    print(f"ray start-up    {median['ray_startup']:7.2f} s")
    print(f"ray / pool      {ratio:7.3f}  (target <= 1.10: {'met' if ratio <= 1.10 else 'NOT met'}); "
          f"with start-up {result['ray_with_startup_over_pool']:.3f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
