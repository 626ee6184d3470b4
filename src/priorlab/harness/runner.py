"""Run a reproduction's arms x seeds, caching each finished run as one JSON file.

Layout: ``<results>/<method id>/<tier>/<arm>__seed<k>.json``. A file is written atomically
when its run finishes, so Ctrl-C (or a crash) loses only the runs in flight, and a re-run
redoes nothing finished. Each file records its config; a file whose config (hashed anew on
reading) does not match the current one, or that does not parse, stops with an error naming it.
A full-tier run first registers the claim (:mod:`priorlab.harness.registration`).

Exploratory runs override keys of a tier's config (``priorlab reproduce --set``): their records
carry ``"exploratory": {"overrides": ...}``, they never register the claim, and a plan without
overrides refuses to read them. Where runs execute (in process, a local pool, Ray) is
:mod:`priorlab.harness.executors`; whatever the executor, this process writes every file.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from priorlab.errors import PriorlabError, UsageError, did_you_mean
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
    overrides: dict | None = None  # exploratory: the keys of the tier's config that were overridden


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


def tier_config(claim: Claim, tier: str, overrides: dict | None = None) -> dict:
    """The tier's config with ``overrides`` applied; an override must name a key it has."""
    config = dict(claim.tiers[tier])
    for key in overrides or {}:
        if key not in config:
            raise did_you_mean(key, config, f"config key of {claim.method}'s {tier} tier (--set)")
    return {**config, **(overrides or {})}


def overrides_hash(overrides: dict) -> str:
    return hashlib.sha256(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:12]


def config_hash(claim: Claim, arm: str, tier: str, seed: int, overrides: dict | None = None) -> str:
    fields = {"seed_id": claim.seed_id, "revision": claim.revision, "arm": arm, "tier": tier,
              "seed": seed, "config": tier_config(claim, tier, overrides)}
    if overrides:  # kept out of the blob otherwise, so the hashes of committed runs do not move
        fields["overrides"] = overrides
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
        if data.get("exploratory") and not job.overrides:
            raise PriorlabError(f"results file {path} is an exploratory run (--set), never read for a "
                                "verdict; move it out of this results folder")
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
         seed_start: int = 0, overrides: dict | None = None) -> tuple[Claim, list[Job]]:
    """The jobs of a card's claim at a tier: seeds ``seed_start .. seed_start + n - 1``."""
    if tier not in TIERS:
        raise PriorlabError(f"unknown tier {tier!r}; use one of {', '.join(TIERS)}")
    claim = claim_of(card)
    seeds = claim.seeds[tier] if n_seeds is None else n_seeds
    if seeds < 1:
        raise PriorlabError(f"--seeds must be at least 1, got {seeds}")
    if seed_start < 0:
        raise PriorlabError(f"--seed-start must be >= 0, got {seed_start}")
    config = tier_config(claim, tier, overrides)
    jobs = [Job(card.reproduction, arm, tier, seed, config, config_hash(claim, arm, tier, seed, overrides),
                run_path(results, claim, tier, arm, seed), overrides or None)
            for seed in range(seed_start, seed_start + seeds) for arm in claim.arms_for(tier)]
    return claim, jobs


def execute(job: Job) -> dict:
    """Run one job and write its result file atomically; returns the record."""
    record = compute(job)
    write_result(job.path, record)
    return record


def compute(job: Job) -> dict:
    """Run one job, single-threaded, and return its record (written by the caller).

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
    if job.overrides:
        record["exploratory"] = {"overrides": job.overrides}
    return record


def write_result(path: Path, record: dict) -> None:
    """Write one result file atomically: readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=float))
    os.replace(tmp, path)


def run_reproductions(cards: list[MethodCard], *, tier: str, results: Path, n_seeds: int | None = None,
                      jobs: int = 1, force: bool = False, seed_start: int = 0, executor: str = "local",
                      address: str | None = None, overrides: dict | None = None) -> None:
    """Run every missing (or, with ``force``, every) job of the given cards.

    At the full tier each claim is registered (or checked against its lock) before any run, unless
    the runs are exploratory (``overrides``). A failed run does not stop the others; when any
    failed, :class:`~priorlab.harness.executors.RunsFailed` is raised at the end naming them.
    """
    from priorlab.harness.executors import EXECUTORS, run_jobs

    if executor not in EXECUTORS:
        raise did_you_mean(executor, EXECUTORS, "executor")
    if address and executor != "ray":
        raise UsageError("--address needs --executor ray")
    todo: list[Job] = []
    for card in cards:
        claim, planned = plan(card, tier, n_seeds, results, seed_start, overrides)
        if tier == "full" and not overrides:
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
        run_jobs(todo, executor=executor, jobs=jobs, address=address, bar=bar)
    finally:
        bar.close()


def load_results(card: MethodCard, tier: str, results: Path, n_seeds: int | None = None,
                 seed_start: int = 0, overrides: dict | None = None) -> tuple[Claim, list[dict]]:
    """The finished runs of the card's plan (missing ones are left out)."""
    claim, planned = plan(card, tier, n_seeds, results, seed_start, overrides)
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


def write_tensorboard(records: list[dict], out: Path) -> list[Path]:
    """Each record's curves as TensorBoard scalars under ``out/<method>/<tier>/<arm>__seed<k>/``.

    A curve's x is the step when every x is a whole number, else the point's index. Earlier event
    files in a run's folder are replaced, so writing again does not duplicate the curves.
    """
    from torch.utils.tensorboard import SummaryWriter

    folders = []
    for r in records:
        folder = Path(out) / r["method"] / r["tier"] / f"{r['arm']}__seed{r['seed']}"
        for old in folder.glob("events.out.tfevents.*"):
            old.unlink()
        with SummaryWriter(str(folder)) as writer:
            for name, curve in r["curves"].items():
                xs = curve["x"]
                steps = [int(x) for x in xs] if all(float(x).is_integer() for x in xs) else range(len(xs))
                for step, y in zip(steps, curve["y"]):
                    writer.add_scalar(name, float(y), global_step=step)
        folders.append(folder)
    return folders
