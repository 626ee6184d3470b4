"""Run a reproduction's arms x seeds, caching each finished run as one JSON file.

Layout: ``<results>/<method id>/<tier>/<arm>__seed<k>.json``. A file is written atomically
when its run finishes, so Ctrl-C (or a crash) loses only the runs in flight, and a re-run
redoes nothing finished. Each file records the config hash; a file whose hash does not match
the current config (or that does not parse) stops the run with an error naming it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import platform
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from priorlab.errors import PriorlabError
from priorlab.harness.claim import TIERS, Claim, RunOutput
from priorlab.progress import is_quiet, progress, set_quiet
from priorlab.registry import MethodCard, all_cards, get

RESULT_KEYS = ("seed_id", "method", "arm", "tier", "seed", "config", "config_hash", "metrics",
               "curves", "info", "wall_time_s", "git_commit", "versions")


@dataclass(frozen=True)
class Job:
    module: str
    arm: str
    tier: str
    seed: int
    config: dict
    config_hash: str
    path: Path


def reproduction_module(card: MethodCard):
    if not card.reproduction:
        raise PriorlabError(f"method {card.id!r} has no reproduction yet")
    return importlib.import_module(f"priorlab.reproductions.{card.reproduction}")


def claim_of(card: MethodCard) -> Claim:
    return reproduction_module(card).CLAIM


def reproduction_cards(keys=None) -> list[MethodCard]:
    """Cards to reproduce: the named ones (slug or seed id), or every card owning a claim.

    Several cards can share one reproduction (e.g. stablemax and perpgrad); it runs once, under
    the card its claim names.
    """
    cards = [get(k) for k in keys] if keys else [c for c in all_cards() if c.reproduction]
    owners: dict[str, MethodCard] = {}
    for card in cards:
        owner = get(claim_of(card).method)
        owners.setdefault(owner.id, owner)
    return list(owners.values())


def config_hash(claim: Claim, arm: str, tier: str, seed: int) -> str:
    blob = json.dumps({"seed_id": claim.seed_id, "revision": claim.revision, "arm": arm,
                       "tier": tier, "seed": seed, "config": claim.tiers[tier]},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_path(results: Path, claim: Claim, tier: str, arm: str, seed: int) -> Path:
    return Path(results) / claim.method / tier / f"{arm}__seed{seed}.json"


def read_result(path: Path, expected_hash: str | None = None) -> dict:
    """Load one result file, with a clear error when it is corrupt or from another config."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PriorlabError(f"results file {path} is unreadable or corrupt ({e.__class__.__name__}); "
                            "delete it or rerun with --force") from e
    missing = [k for k in RESULT_KEYS if k not in data] if isinstance(data, dict) else RESULT_KEYS
    if missing:
        raise PriorlabError(f"results file {path} lacks {', '.join(missing)}; "
                            "delete it or rerun with --force")
    if expected_hash is not None and data["config_hash"] != expected_hash:
        raise PriorlabError(f"results file {path} is from another config (hash {data['config_hash']}, "
                            f"current {expected_hash}); rerun with --force to replace it")
    return data


def plan(card: MethodCard, tier: str, n_seeds: int | None, results: Path) -> tuple[Claim, list[Job]]:
    if tier not in TIERS:
        raise PriorlabError(f"unknown tier {tier!r}; use one of {', '.join(TIERS)}")
    claim = claim_of(card)
    seeds = claim.seeds[tier] if n_seeds is None else n_seeds
    if seeds < 1:
        raise PriorlabError(f"--seeds must be at least 1, got {seeds}")
    jobs = [Job(card.reproduction, arm, tier, seed, claim.tiers[tier],
                config_hash(claim, arm, tier, seed), run_path(results, claim, tier, arm, seed))
            for seed in range(seeds) for arm in claim.arms_for(tier)]
    return claim, jobs


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5,
                               cwd=Path(__file__).resolve().parent).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> dict:
    import numpy
    import torch

    import priorlab
    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "priorlab": priorlab.__version__}


def execute(job: Job) -> dict:
    """Run one job, single-threaded, and write its result file atomically; returns the record.

    One torch thread per run keeps results independent of the machine's core count and avoids
    oversubscription; parallelism comes from running jobs side by side (``--jobs``).
    """
    import torch

    torch.set_num_threads(1)
    module = importlib.import_module(f"priorlab.reproductions.{job.module}")
    claim: Claim = module.CLAIM
    start = time.perf_counter()
    was_quiet = is_quiet()
    set_quiet(True)  # the harness's own bar counts runs; bars inside a run would garble it
    try:
        out = module.run(job.arm, dict(job.config), job.seed)
    finally:
        set_quiet(was_quiet)
    if not isinstance(out, RunOutput):
        raise PriorlabError(f"{job.module}.run must return a RunOutput, got {type(out).__name__}")
    wanted = {claim.metric, *claim.extra_metrics, *(g.metric for g in claim.guards)}
    missing = sorted(wanted - set(out.metrics))
    if missing:
        raise PriorlabError(f"{job.module}.run({job.arm!r}) returned no {', '.join(missing)}")
    bad = [k for k, v in out.metrics.items() if not math.isfinite(float(v))]
    if bad:
        raise PriorlabError(f"{job.module}.run({job.arm!r}, seed={job.seed}) gave non-finite {bad}")
    record = {"seed_id": claim.seed_id, "method": claim.method, "arm": job.arm, "tier": job.tier,
              "seed": job.seed, "config": job.config, "config_hash": job.config_hash,
              "metrics": {k: float(v) for k, v in out.metrics.items()}, "curves": out.curves,
              "info": out.info, "wall_time_s": round(time.perf_counter() - start, 3),
              "git_commit": _git_commit(), "versions": _versions(), "torch_threads": 1}
    job.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = job.path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=float))
    os.replace(tmp, job.path)
    return record


def run_reproductions(cards: list[MethodCard], *, tier: str, results: Path, n_seeds: int | None = None,
                      jobs: int = 1, force: bool = False) -> None:
    """Run every missing (or, with ``force``, every) job of the given cards."""
    todo: list[Job] = []
    for card in cards:
        _, planned = plan(card, tier, n_seeds, results)
        for job in planned:
            if job.path.exists() and not force:
                read_result(job.path, job.config_hash)  # fail early on a stale or corrupt file
                continue
            todo.append(job)
    if not todo:
        return
    bar = progress(total=len(todo), desc=f"{tier} runs", leave=True)
    try:
        if jobs <= 1:
            for job in todo:
                bar.set_postfix_str(f"{job.module}:{job.arm}:s{job.seed}")
                execute(job)
                bar.update()
        else:
            with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(execute, job) for job in todo]
                try:
                    for future in as_completed(futures):
                        future.result()
                        bar.update()
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
    finally:
        bar.close()


def load_results(card: MethodCard, tier: str, results: Path, n_seeds: int | None = None) -> tuple[Claim, list[dict]]:
    """The finished runs of the card's plan (missing ones are left out)."""
    claim, planned = plan(card, tier, n_seeds, results)
    return claim, [read_result(j.path, j.config_hash) for j in planned if j.path.exists()]


def stored_tiers(results: Path) -> list[tuple[str, str, int]]:
    """(method id, tier, number of seeds) for every tier folder present under ``results``."""
    found = []
    for tier_dir in sorted(Path(results).glob("*/*")):
        if tier_dir.is_dir() and tier_dir.name in TIERS:
            seeds = {p.stem.rsplit("__seed", 1)[-1] for p in tier_dir.glob("*__seed*.json")}
            if seeds:
                found.append((tier_dir.parent.name, tier_dir.name, len(seeds)))
    return found
