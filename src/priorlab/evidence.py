"""The committed verdicts, packaged: a compact summary of the full-tier results that ships inside
the wheel, so an installed copy's ``priorlab list`` / ``info`` show the evidence.

``priorlab report`` regenerates ``evidence.json`` whenever it reports the checkout's committed
``results/``; a test checks the committed file equals what the committed results give, so it
cannot go stale. A user's own runs are never written into it.
"""

from __future__ import annotations

import json
from pathlib import Path

from priorlab.errors import PriorlabError

EVIDENCE_FILE = Path(__file__).with_name("evidence.json")
FORMAT = 1
FULL_REPORT = ("REPORT.md and site/index.html in the priorlab source repository "
               "(`priorlab report` writes them from its committed results/)")


def _num(x):
    """Six significant digits: the file must not change with the last bits of a float sum."""
    return None if x is None else float(f"{x:.6g}")


def compact(summaries: list[dict]) -> dict:
    """Per method id: its status, headline effect, interval, seeds and markers (full tier only)."""
    methods = {}
    for s in sorted((s for s in summaries if s["tier"] == "full"), key=lambda s: s["method"]):
        first = s["comparisons"][0] if s["comparisons"] else {}
        methods[s["method"]] = {
            "seed_id": s["seed_id"], "status": s["status"], "verdict_text": s["verdict_text"],
            "cards": dict(sorted(s["cards"].items())), "metric": s["metric"],
            "comparison": first.get("label"), "effect": _num(s["effect"]),
            "ci_low": _num(s["ci_low"]), "ci_high": _num(s["ci_high"]),
            "resolution": _num(first.get("resolution") or None), "seeds": first.get("n", 0),
            "runs": s["runs"], "expected_runs": s["expected_runs"], "under_budget": s["under_budget"],
            "budget": s["budget"],
            "untested_clauses": sum(1 for c in s["clauses"] if c["untested"] and not c["tested_by"]),
            "commits": sorted({c[:12] + ("+dirty" if c.endswith("+dirty") else "")
                               for c in s["git_commits"]}),
            "revision": s["revision"]}
    return {"format": FORMAT, "full_report": FULL_REPORT, "methods": methods}


def write_evidence(summaries: list[dict], path: Path | None = None) -> Path:
    path = Path(path or EVIDENCE_FILE)
    path.write_text(json.dumps(compact(summaries), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_evidence(path: Path | None = None) -> dict | None:
    """The packaged evidence; None when the package ships none."""
    path = Path(path or EVIDENCE_FILE)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT or not isinstance(data.get("methods"), dict):
            raise ValueError("format")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as e:
        raise PriorlabError(f"packaged evidence {path} is unreadable ({e.__class__.__name__}); "
                            "reinstall priorlab") from e
    return data


def full_summaries(results: Path) -> list[dict]:
    """The full-tier summaries of a results folder, as ``priorlab report`` computes them (no plots)."""
    from priorlab.harness.runner import claim_of, load_results, stored_tiers
    from priorlab.harness.summary import summarise
    from priorlab.registry import get

    summaries = []
    for method_id, tier in stored_tiers(Path(results)):
        if tier != "full":
            continue
        try:
            card = get(method_id)
        except PriorlabError:  # not a registered method's folder; the report warns about it
            continue
        n_seeds = claim_of(card).seeds[tier]
        claim, records = load_results(card, tier, Path(results), n_seeds)
        summaries.append(summarise(claim, records, tier, n_seeds))
    return summaries


def describe(entry: dict) -> str:
    """One line for ``priorlab info``: the headline effect, interval, seeds and markers."""
    if entry["effect"] is None:
        numbers = "no effect estimate"
    else:
        numbers = (f"{entry['comparison']} on {entry['metric']}: effect {entry['effect']:+.4g}, "
                   f"95% CI [{entry['ci_low']:.4g}, {entry['ci_high']:.4g}], {entry['seeds']} seeds")
    marks = (["under the paper's budget"] if entry["under_budget"] else []) + (
        [f"{entry['untested_clauses']} untested clause(s)"] if entry["untested_clauses"] else [])
    return (f"{numbers}{'; ' + ', '.join(marks) if marks else ''}; claim revision {entry['revision']}, "
            f"commit {', '.join(entry['commits']) or 'unknown'}")
