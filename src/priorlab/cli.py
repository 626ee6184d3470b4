"""The ``priorlab`` command: list | info | reproduce | report | flow."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path

from priorlab import __version__
from priorlab.errors import PriorlabError, UsageError
from priorlab.harness.claim import TIERS
from priorlab.progress import set_quiet
from priorlab.registry import MethodCard, find, get
from priorlab.sceneflow.cli import add_flow_subparser

SMOKE_RESULTS = Path("runs/smoke")


OWN_RESULTS = Path("results")  # an installed copy's full-tier runs go to the working folder


def checkout_results() -> Path | None:
    """``$PRIORLAB_RESULTS``, else the checkout's ``results/`` (found from the package, so any
    working directory sees it); None in an installed copy, which ships the packaged evidence."""
    if os.environ.get("PRIORLAB_RESULTS"):
        return Path(os.environ["PRIORLAB_RESULTS"])
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "results").is_dir():
        return checkout / "results"
    return None


def committed_results() -> Path:
    """The committed evidence (:func:`checkout_results`), else ``./results``."""
    return checkout_results() or OWN_RESULTS


def _packaged(card: MethodCard) -> dict | None:
    """The packaged evidence of the card's reproduction, when no checkout results are found."""
    from priorlab.evidence import read_evidence
    from priorlab.harness.runner import claim_of

    evidence = read_evidence() if checkout_results() is None and card.reproduction else None
    return evidence["methods"].get(claim_of(card).method) if evidence else None


def _own_runs() -> bool:
    """An installed copy with full-tier runs of the user's own in ``./results``."""
    return checkout_results() is None and OWN_RESULTS.is_dir()


def _full_summary(card: MethodCard, results: Path | None = None) -> dict | None:
    """The summary of the card's stored full-tier results; None when none are stored."""
    from priorlab.harness.runner import claim_of, load_results
    from priorlab.harness.summary import summarise

    claim = claim_of(card)
    tier_dir = (results or committed_results()) / claim.method / "full"
    if not tier_dir.is_dir() or not any(tier_dir.glob("*__seed*.json")):
        return None
    claim, records = load_results(get(claim.method), "full", results or committed_results())
    return summarise(claim, records, "full", claim.seeds["full"])


def _status(card: MethodCard, results: Path | None = None) -> str:
    """The card's reproduction verdict from stored full-tier results, never written by hand:
    the verdict of the comparisons about this card's method. Without a checkout (and without
    ``results``), the packaged evidence's."""
    if not card.reproduction:
        return "no reproduction"
    if results is None and checkout_results() is None:
        entry = _packaged(card)
        return entry["cards"].get(card.id, entry["status"]) if entry else "not run"
    try:
        return _status_of(card, _full_summary(card, results))
    except PriorlabError:
        return f"stale or unreadable results (priorlab info {card.id})"


def _status_of(card: MethodCard, summary: dict | None) -> str:
    """The verdict of the comparisons about ``card`` in a summary of its stored results."""
    if summary is None:
        return "not run"
    return summary["cards"].get(card.id, summary["status"])


def cmd_list(args) -> int:
    cards = find(args.pattern)
    if args.json:
        print(json.dumps([{"id": c.id, "seed_id": c.seed_id, "name": c.name, "title": c.paper.title,
                           "family": c.family, "kind": c.kind, "arxiv": c.paper.arxiv,
                           "code_url": c.paper.code_url, "reproduction": c.reproduction,
                           "status": _status(c),
                           **({"own_runs": _status(c, OWN_RESULTS)} if _own_runs() else {})}
                          for c in cards], indent=1))
        return 0
    if not cards:
        print(f"no method matches {args.pattern!r}", file=sys.stderr)
        return 1
    rows = [(str(c.seed_id), c.id, c.name, c.family, c.kind, _status(c)) for c in cards]
    header = ("seed", "id", "name", "family", "kind", "reproduction")
    if _own_runs():  # the user's runs beside the packaged evidence, never mixed into it
        rows = [(*r, _status(c, OWN_RESULTS)) for r, c in zip(rows, cards)]
        header = (*header, f"your runs ({OWN_RESULTS}/)")
    if args.markdown:
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for r in rows:
            print("| " + " | ".join(r) + " |")
        return 0
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    for r in (header, *rows):
        print("  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip())
    if checkout_results() is None:
        from priorlab.evidence import FULL_REPORT
        print(f"\nreproduction: the committed verdicts packaged with this copy; full report: {FULL_REPORT}")
    return 0


def _test_line(t: dict) -> str:
    ci = "–" if t["ci_low"] is None else f"[{t['ci_low']:.4g}, {t['ci_high']:.4g}]"
    effect = "–" if t["effect"] is None else f"{t['effect']:+.4g}"
    verdict = t["verdict"] + (f" ({t['reason']})" if t["reason"] else "")
    return (f"{t['label']} ({t['metric']}, {t['kind']}): effect {effect}, 95% CI {ci}, "
            f"{t['n']} seeds -> {verdict}")


def render_card(card: MethodCard) -> str:
    p = card.paper
    code = f"{p.code_url} ({p.licence})" if p.code_url else p.licence
    fields = [("paper", f"{p.title} — {p.authors}, {p.venue} {p.year}, arXiv {p.arxiv}"),
              ("official code", code), ("family / kind", f"{card.family} / {card.kind}"),
              ("what it is", card.summary), ("hyperparameters", card.hyperparameters),
              ("deviations", card.deviations), ("where the claim holds", card.claim_scope)]
    out = [f"{card.name}  [{card.id}, seed id {p.seed_id}]", ""]
    for name, text in fields:
        out.append(f"{name}:")
        out.append("\n  \n".join(textwrap.fill(para, 96, initial_indent="  ", subsequent_indent="  ")
                                for para in text.strip().split("\n\n")))
    out += ["use it:", textwrap.indent(card.usage.strip(), "  ")]
    if card.reproduction:
        from priorlab.harness.runner import claim_of
        from priorlab.harness.summary import clause_table
        claim = claim_of(card)
        budget = claim.budget.describe() if claim.budget else "not declared"
        out += ["reproduction:"] + [
            textwrap.fill(f"{label}: {text}", 96, initial_indent="  ", subsequent_indent="    ")
            for label, text in (("claim", f"(revision {claim.revision}) {claim.statement}"),
                                ("setting (full tier)", claim.setting["full"]), ("budget", budget))]
        for row in clause_table(claim):
            how = ", ".join(row["tested_by"]) or f"UNTESTED: {row['untested']}"
            out.append(textwrap.fill(f"clause: {row['clause']} — {how}", 96, initial_indent="  ",
                                     subsequent_indent="    "))
        if checkout_results() is None:
            out.append(f"  run: priorlab reproduce {card.seed_id} --tier full    "
                       f"verdict (committed results): {_status(card)}")
            return "\n".join(out + _packaged_lines(card))
        try:  # one load serves the verdict line and the comparison lines
            summary = _full_summary(card)
            status = _status_of(card, summary)
        except PriorlabError:
            summary, status = None, f"stale or unreadable results (priorlab info {card.id})"
        out.append(f"  run: priorlab reproduce {card.seed_id} --tier full    "
                   f"verdict (committed results): {status}")
        for t in (summary["comparisons"] + summary["guards"]) if summary else ():
            out.append("    " + _test_line(t))
    return "\n".join(out)


def _packaged_lines(card: MethodCard) -> list[str]:
    """An installed copy's evidence lines: the packaged verdict, then the user's own runs."""
    from priorlab.evidence import FULL_REPORT, describe

    entry = _packaged(card)
    out = ["    " + describe(entry) if entry else "    no committed full-tier result is packaged",
           textwrap.fill(f"full report: {FULL_REPORT}", 96, initial_indent="    ",
                         subsequent_indent="      ")]
    if _own_runs():
        out.append(f"  your runs ({OWN_RESULTS}/, not part of the evidence): {_status(card, OWN_RESULTS)}")
    return out


def cmd_info(args) -> int:
    print(render_card(get(args.id)))
    return 0


def _committed_line(card: MethodCard) -> str:
    try:
        summary = _full_summary(card)
    except PriorlabError as e:
        return f"committed results unreadable ({e})"
    if summary is None:
        return "no committed full-tier result"
    effect = "–" if summary["effect"] is None else f"{summary['effect']:+.4g}"
    return f"committed full tier: {summary['status']} (first effect {effect})"


def parse_overrides(pairs: list[str] | None) -> dict:
    """``--set key=value`` pairs as a dict; a value is read as JSON, else kept as a string."""
    overrides = {}
    for pair in pairs or ():
        key, eq, text = pair.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"--set takes key=value, got {pair!r}")
        try:
            overrides[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            overrides[key.strip()] = text
    return overrides


def _effect_line(t: dict) -> str:
    """A test's numbers without its verdict words (for exploratory runs)."""
    ci = "–" if t["ci_low"] is None else f"[{t['ci_low']:.4g}, {t['ci_high']:.4g}]"
    effect = "–" if t["effect"] is None else f"{t['effect']:+.4g}"
    return f"{t['label']} ({t['metric']}): effect {effect}, 95% CI {ci}, {t['n']} seeds"


def _results_folder(args, card: MethodCard, overrides: dict) -> Path:
    from priorlab.harness.runner import claim_of, overrides_hash

    if args.results:
        return Path(args.results)
    if overrides:
        return Path("runs/explore") / claim_of(card).method / overrides_hash(overrides)
    if args.seed_start is not None:
        return Path("runs/replicate") / f"{args.tier}-seed{args.seed_start}"
    return committed_results() if args.tier == "full" else SMOKE_RESULTS


def cmd_reproduce(args) -> int:
    from priorlab.harness.executors import RunsFailed
    from priorlab.harness.runner import (load_results, reproduction_cards, run_reproductions,
                                         write_tensorboard)
    from priorlab.harness.summary import summarise

    if not args.ids and not args.all:
        raise UsageError("name at least one method id (or seed id), or pass --all")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {args.jobs}")
    if args.address and args.executor != "ray":
        raise UsageError("--address needs --executor ray")
    overrides = parse_overrides(args.set)
    replicate = args.seed_start is not None and not overrides
    seed_start = args.seed_start or 0
    cards = reproduction_cards(None if args.all else args.ids)
    folders = {card.id: _results_folder(args, card, overrides) for card in cards}
    groups: dict[Path, list[MethodCard]] = {}
    for card in cards:  # exploratory runs get a folder per method; one executor call per folder
        groups.setdefault(folders[card.id], []).append(card)
    failed: RunsFailed | None = None
    try:
        for results, group in groups.items():
            try:
                run_reproductions(group, tier=args.tier, results=results, n_seeds=args.seeds,
                                  jobs=args.jobs, force=args.force, seed_start=seed_start,
                                  executor=args.executor, address=args.address, overrides=overrides)
            except RunsFailed as e:  # the others finished; summarise them, then fail
                failed = RunsFailed((failed.failures if failed else []) + e.failures)
    except KeyboardInterrupt:
        print(f"interrupted: finished runs are kept in {', '.join(map(str, groups))}/; run the same "
              "command to resume", file=sys.stderr)
        return 130
    summaries = []
    for card in cards:
        claim, records = load_results(card, args.tier, folders[card.id], args.seeds, seed_start, overrides)
        if args.tensorboard:
            write_tensorboard(records, Path(args.tensorboard))
        summary = summarise(claim, records, args.tier, args.seeds or claim.seeds[args.tier])
        if overrides:  # never a verdict: the words are dropped, the numbers kept
            summary.update(status="exploratory: not a verdict", verdict=None, verdict_text=None,
                           exploratory={"overrides": overrides})
            for t in summary["comparisons"] + summary["guards"]:
                t.update(verdict=None, reason=None)
        elif args.tier == "smoke" or replicate:
            summary["committed"] = _committed_line(card)
        summaries.append(summary)
    if args.json:
        print(json.dumps(summaries, indent=1))
    else:
        for s in summaries:
            head = f"{s['seed_id']:>3} {s['method']:<24} {s['tier']:<5}"
            if overrides:
                print(f"{head} {s['status']}  (--set {json.dumps(overrides, sort_keys=True)})")
                for t in s["comparisons"] + s["guards"]:
                    print("      " + _effect_line(t))
                continue
            if s["tier"] == "smoke":  # the smoke tier checks plumbing; the evidence is the full tier
                print(f"{head} {s['status']:<20} | {s['committed']}")
                continue
            print(f"{head} {s['status']}" + (f"  (seeds {seed_start}..)" if replicate else ""))
            for t in s["comparisons"] + s["guards"]:
                print("      " + _test_line(t))
            if replicate:
                agree = s["committed"].startswith(f"committed full tier: {s['status']} ")
                print(f"      {s['committed']} -> {'agrees' if agree else 'DISAGREES'}")
        print(f"results in {', '.join(map(str, groups))}/", file=sys.stderr)
    if args.tensorboard:
        print(f"TensorBoard curves in {args.tensorboard}/ (tensorboard --logdir {args.tensorboard})",
              file=sys.stderr)
    if failed:
        raise failed
    return 0


def cmd_report(args) -> int:
    from priorlab.evidence import EVIDENCE_FILE
    from priorlab.harness.report import write_report

    results = Path(args.results) if args.results else committed_results()
    checkout = Path(__file__).resolve().parents[2]  # the packaged evidence follows only these results
    is_committed = ((checkout / "pyproject.toml").is_file()
                    and results.resolve() == (checkout / "results").resolve())
    md, page, summaries = write_report(results, Path(args.out),
                                       evidence=EVIDENCE_FILE if is_committed else None)
    print(f"wrote {md}, {page} and {Path(args.out) / 'site' / 'index.html'} ({len(summaries)} reproductions)"
          + (f"; updated {EVIDENCE_FILE}" if is_committed else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="priorlab", description=__doc__)
    parser.add_argument("--version", action="version", version=f"priorlab {__version__}")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback on errors (also PRIORLAB_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="registered methods (PATTERN: shell-style, on id or name)")
    p.add_argument("pattern", nargs="?")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--markdown", action="store_true", help="a Markdown table (the README's)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="a method's paper card (by id or seed id)")
    p.add_argument("id")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "reproduce", help="run reproductions: arms x seeds, cached and resumable",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Ray on a cluster: `ray start --head --port 6379` on the head node, `ray start --address "
               "HEAD_IP:6379` on the others\n(all with priorlab installed at the same commit), then "
               "`priorlab reproduce ... --executor ray --address HEAD_IP:6379`\non a node. The driver "
               "writes every result file; a rerun redoes nothing finished.")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--all", action="store_true", help="every registered reproduction")
    p.add_argument("--tier", choices=TIERS, default="smoke")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the claim's)")
    p.add_argument("--jobs", type=int, default=1,
                   help="parallel worker processes of the local pool (the embedded Ray's CPUs: at least 2)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="where runs execute: a local process pool, or Ray tasks (needs priorlab[ray])")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="a running Ray cluster (HEAD_IP:6379, or auto); without it Ray starts embedded here")
    p.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                   help="override a key of the tier's config (value read as JSON, else a string); "
                        "exploratory: runs go to runs/explore/<method>/<hash>/ and give no verdict")
    p.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="write each run's curves for TensorBoard (DIR/<method>/<tier>/<arm>__seed<k>/)")
    p.add_argument("--results", default=None,
                   help="results folder (default: the committed results/ for full, runs/smoke/ for smoke)")
    p.add_argument("--force", action="store_true", help="rerun and replace finished runs")
    p.add_argument("--seed-start", type=int, default=None, metavar="S",
                   help="replicate on fresh seeds S, S+1, ... into runs/replicate/ (or --results) and "
                        "print their verdict beside the committed one")
    p.add_argument("--json", action="store_true", help="one JSON object per paper")
    p.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS,
                   help="no progress bars (also accepted before the command)")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("report", help="write REPORT.md, report.html and site/ from a results folder")
    p.add_argument("--results", default=None, help="results folder (default: the committed results/)")
    p.add_argument("--out", default=".", help="folder for REPORT.md and report.html")
    p.set_defaults(func=cmd_report)

    add_flow_subparser(sub)
    return parser


def main(argv=None) -> int:
    """Exit codes: 0 ok, 1 bad data or failed run, 2 bad usage, 130 interrupted. Errors are one
    line on stderr; ``--debug`` (or PRIORLAB_DEBUG=1) shows the traceback instead."""
    args = build_parser().parse_args(argv)
    if args.quiet:
        set_quiet(True)  # otherwise PRIORLAB_QUIET (read by priorlab.progress) stands
    debug = args.debug or os.environ.get("PRIORLAB_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        if isinstance(e, PriorlabError):
            print(f"error: {e}", file=sys.stderr)
            return 2 if isinstance(e, UsageError) else 1
        if isinstance(e, OSError):
            print(f"error: {e.strerror or e} ({e.filename or 'file'}); check the path and its "
                  "permissions", file=sys.stderr)
            return 1
        print(f"error: {type(e).__name__}: {e} — this looks like a bug in priorlab; rerun with "
              "--debug for the traceback and report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
