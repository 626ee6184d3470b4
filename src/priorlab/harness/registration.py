"""Pre-registration: the first full-tier run of a claim freezes its declaration.

The lock lives beside the evidence it governs, ``<results>/<method>/claim.lock.json``, and holds
the claim's history: one entry per revision with its reason, the frozen declaration, the fields
that changed and whether full-tier results already existed when it changed. A declaration that
differs from its lock at the same revision is refused; changing it takes a new
:class:`~priorlab.harness.claim.Revision` with a reason, which also retires the cached results
(the revision is part of every run's config hash).

Frozen: everything that decides the full-tier verdict — statement, clauses and untested list,
metric and its direction, arms, comparisons and guards with their thresholds, the full tier's
config, seeds and budget, resolutions. The smoke tier checks plumbing and stays free to change.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from priorlab.errors import PriorlabError
from priorlab.harness.claim import Claim

LOCK_NAME = "claim.lock.json"


def declaration(claim: Claim) -> dict:
    """The frozen fields of a claim, as JSON data."""
    decl = {
        "statement": claim.statement, "clauses": list(claim.clauses),
        "untested": [asdict(u) for u in claim.untested], "metric": claim.metric,
        "higher_is_better": claim.higher_is_better, "arms": list(claim.arms_for("full")),
        "comparisons": [asdict(c) for c in claim.comparisons], "guards": [asdict(g) for g in claim.guards],
        "bounds": [asdict(b) for b in claim.bounds],
        "full_config": claim.tiers["full"], "full_seeds": claim.seeds["full"],
        "budget": asdict(claim.budget) if claim.budget else None,
        "resolution": dict(sorted(claim.resolution.items())),
    }
    return json.loads(json.dumps(decl, sort_keys=True, default=str))


def lock_path(results: Path, claim: Claim) -> Path:
    return Path(results) / claim.method / LOCK_NAME


def read_lock(results: Path, claim: Claim) -> dict | None:
    path = lock_path(results, claim)
    if not path.exists():
        return None
    try:
        lock = json.loads(path.read_text(encoding="utf-8"))
        history = lock["history"]
        if not history or not all("revision" in h and "declaration" in h for h in history):
            raise KeyError("history")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise PriorlabError(f"claim lock {path} is unreadable or corrupt ({e.__class__.__name__}); "
                            "restore it from git — it is the claim's pre-registration") from e
    return lock


def changed_fields(old: dict, new: dict) -> list[str]:
    """Fields whose values differ; a field the older lock predates counts as unchanged while
    the claim leaves it empty (the declaration schema may grow, the claim did not change)."""
    empty = (None, [], {}, "")
    return sorted(k for k in set(old) | set(new)
                  if old.get(k) != new.get(k) and not (k not in old and new.get(k) in empty))


def check(claim: Claim, lock: dict | None) -> None:
    """Raise when the declaration contradicts its lock; a newer revision is allowed."""
    if lock is None:
        return
    current = lock["history"][-1]
    if claim.revision < current["revision"]:
        raise PriorlabError(f"claim of paper {claim.seed_id} is at revision {claim.revision} but its "
                            f"lock is at revision {current['revision']}; the code is older than the "
                            "registered claim")
    if claim.revision == current["revision"]:
        changed = changed_fields(current["declaration"], declaration(claim))
        if changed:
            raise PriorlabError(
                f"claim of paper {claim.seed_id} ({claim.method}) differs from its registered "
                f"declaration in {', '.join(changed)} at the same revision {claim.revision}; add "
                f"revisions=(..., Revision({claim.revision + 1}, 'why it changed')) to the claim")


def register(claim: Claim, results: Path, commit: str) -> dict:
    """Create or extend the claim's lock before full-tier runs start; returns the lock."""
    lock = read_lock(results, claim)
    check(claim, lock)
    tier_dir = Path(results) / claim.method / "full"
    results_existed = tier_dir.is_dir() and any(tier_dir.glob("*__seed*.json"))
    decl = declaration(claim)
    reasons = {r.number: r.reason for r in claim.revisions}
    if lock is None:
        earlier = [{"revision": n, "reason": reasons[n], "declaration": None, "changed": None,
                    "results_existed": None, "commit": None,
                    "note": "revised before claims were locked; the declaration was not recorded"}
                   for n in sorted(reasons) if n < claim.revision]
        first = {"revision": claim.revision,
                 "reason": reasons.get(claim.revision, "first registration"),
                 "declaration": decl, "changed": None, "results_existed": results_existed,
                 "commit": commit}
        if results_existed:
            first["note"] = "registered after full-tier results existed (locks introduced later)"
        lock = {"seed_id": claim.seed_id, "method": claim.method, "history": [*earlier, first]}
    elif claim.revision > lock["history"][-1]["revision"]:
        previous = lock["history"][-1]["declaration"] or {}
        for n in range(lock["history"][-1]["revision"] + 1, claim.revision + 1):
            last = n == claim.revision
            lock["history"].append({"revision": n, "reason": reasons[n],
                                    "declaration": decl if last else None,
                                    "changed": changed_fields(previous, decl) if last else None,
                                    "results_existed": results_existed, "commit": commit})
    else:
        return lock
    path = lock_path(results, claim)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(lock, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return lock
