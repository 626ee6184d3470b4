"""Run a reproduction's arms x seeds, caching each finished run as one JSON file.

Layout: ``<results>/<method id>/<tier>/<arm>__seed<k>.json``. A file is written atomically
when its run finishes, so Ctrl-C (or a crash) loses only the runs in flight, and a re-run
redoes nothing finished. Each file records its config; a file whose config (hashed anew on
reading) does not match the current one, or that does not parse, stops with an error naming it.
A full-tier run first registers the claim (:mod:`priorlab.harness.registration`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from priorlab.errors import PriorlabError
from priorlab.harness.claim import TIERS, Claim, RunOutput
from priorlab.harness.provenance import environment, git_commit
from priorlab.harness.registration import register
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


def _cards_for(key) -> list[MethodCard]:
    """The card a key names; a seed id of a paper with several methods names all of them
    (they share the paper's one reproduction)."""
    text = str(key).strip()
    if text.isdigit():
        matches = [c for c in all_cards() if c.seed_id == int(text) and c.reproduction]
        if matches:
            return matches
    return [get(text)]


def reproduction_cards(keys=None) -> list[MethodCard]:
    """Cards to reproduce: the named ones (slug or seed id), or every card owning a claim.

    Several cards can share one reproduction (e.g. stablemax and perpgrad); it runs once, under
    the card its claim names.
    """
    cards = [c for k in keys for c in _cards_for(k)] if keys else [c for c in all_cards() if c.reproduction]
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


def _corrupt(path: Path, problem: str) -> PriorlabError:
    return PriorlabError(f"results file {path} {problem}; delete it or rerun with --force")


def read_result(path: Path, job: Job | None = None) -> dict:
    """Load one result file, with a clear error when it is corrupt or from another config.

    Nothing stored is trusted: the metrics must be finite numbers, and the config hash is
    recomputed from the current claim rather than read from the file.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _corrupt(path, f"is unreadable or corrupt ({e.__class__.__name__})") from e
    missing = [k for k in RESULT_KEYS if k not in data] if isinstance(data, dict) else RESULT_KEYS
    if missing:
        raise _corrupt(path, f"lacks {', '.join(missing)}")
    metrics = data["metrics"]
    if not isinstance(metrics, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in metrics.values()):
        raise _corrupt(path, "has a metric that is not a finite number")
    for key, kind in (("seed", int), ("arm", str), ("tier", str), ("wall_time_s", (int, float)),
                      ("versions", dict), ("curves", dict)):
        if not isinstance(data[key], kind) or isinstance(data[key], bool):
            raise _corrupt(path, f"has an invalid {key!r}")
    if job is not None:
        if (data["arm"], data["seed"], data["tier"]) != (job.arm, job.seed, job.tier):
            raise _corrupt(path, f"holds arm {data['arm']!r} seed {data['seed']} of tier "
                                 f"{data['tier']!r}, not what its name says")
        if data["config"] != json.loads(json.dumps(job.config, default=str)):
            raise PriorlabError(f"results file {path} is from another config or claim revision "
                                f"(current hash {job.config_hash}); rerun with --force to replace it")
        if data["config_hash"] != job.config_hash:
            raise PriorlabError(f"results file {path} is from another claim revision (hash "
                                f"{data['config_hash']}, current {job.config_hash}); rerun with "
                                "--force to replace it")
    return data


def plan(card: MethodCard, tier: str, n_seeds: int | None, results: Path,
         seed_start: int = 0) -> tuple[Claim, list[Job]]:
    """The jobs of a card's claim at a tier: seeds ``seed_start .. seed_start + n - 1``."""
    if tier not in TIERS:
        raise PriorlabError(f"unknown tier {tier!r}; use one of {', '.join(TIERS)}")
    claim = claim_of(card)
    seeds = claim.seeds[tier] if n_seeds is None else n_seeds
    if seeds < 1:
        raise PriorlabError(f"--seeds must be at least 1, got {seeds}")
    if seed_start < 0:
        raise PriorlabError(f"--seed-start must be >= 0, got {seed_start}")
    jobs = [Job(card.reproduction, arm, tier, seed, claim.tiers[tier],
                config_hash(claim, arm, tier, seed), run_path(results, claim, tier, arm, seed))
            for seed in range(seed_start, seed_start + seeds) for arm in claim.arms_for(tier)]
    return claim, jobs


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
              "info": out.info, "resolution": {k: float(v) for k, v in out.resolution.items()},
              "tuning": out.tuning, "wall_time_s": round(time.perf_counter() - start, 3),
              "git_commit": git_commit(), "versions": environment(), "torch_threads": 1}
    job.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = job.path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=float))
    os.replace(tmp, job.path)
    return record


def run_reproductions(cards: list[MethodCard], *, tier: str, results: Path, n_seeds: int | None = None,
                      jobs: int = 1, force: bool = False, seed_start: int = 0) -> None:
    """Run every missing (or, with ``force``, every) job of the given cards.

    At the full tier each claim is registered (or checked against its lock) before any run.
    """
    todo: list[Job] = []
    for card in cards:
        claim, planned = plan(card, tier, n_seeds, results, seed_start)
        if tier == "full":
            register(claim, results, git_commit())
        for job in planned:
            if job.path.exists() and not force:
                read_result(job.path, job)  # fail early on a stale or corrupt file
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


def load_results(card: MethodCard, tier: str, results: Path, n_seeds: int | None = None,
                 seed_start: int = 0) -> tuple[Claim, list[dict]]:
    """The finished runs of the card's plan (missing ones are left out)."""
    claim, planned = plan(card, tier, n_seeds, results, seed_start)
    return claim, [read_result(j.path, j) for j in planned if j.path.exists()]


def stored_tiers(results: Path) -> list[tuple[str, str]]:
    """(method id, tier) for every tier folder holding result files under ``results``.

    Folders are listed as found; a folder whose name is no registered method is the caller's
    to report (see :func:`priorlab.harness.report.write_report`).
    """
    results = Path(results)
    if not results.is_dir():
        raise PriorlabError(f"results folder {results} does not exist")
    return [(d.parent.name, d.name) for d in sorted(results.glob("*/*"))
            if d.is_dir() and d.name in TIERS and any(d.glob("*__seed*.json"))]
