"""The ``priorlab`` command: list | info | reproduce | report | flow."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path

from priorlab.errors import PriorlabError
from priorlab.harness.claim import TIERS
from priorlab.progress import set_quiet
from priorlab.registry import MethodCard, find, get
from priorlab.sceneflow.cli import add_flow_subparser

DEFAULT_RESULTS = {"full": Path("results"), "smoke": Path("runs/smoke")}


def _full_summary(card: MethodCard, results: Path = DEFAULT_RESULTS["full"]) -> dict | None:
    """The summary of the card's stored full-tier results; None when none are stored."""
    from priorlab.harness.runner import claim_of, load_results, stored_tiers
    from priorlab.harness.summary import summarise

    claim = claim_of(card)
    stored = {(m, t): n for m, t, n in stored_tiers(results)}
    if (claim.method, "full") not in stored:
        return None
    n_seeds = max(stored[(claim.method, "full")], claim.seeds["full"])
    claim, records = load_results(get(claim.method), "full", results, n_seeds)
    return summarise(claim, records, "full", n_seeds)


def _status(card: MethodCard) -> str:
    """The card's reproduction verdict from stored full-tier results, never written by hand."""
    if not card.reproduction:
        return "no reproduction"
    summary = _full_summary(card)
    if summary is None:
        return "not run"
    if summary["runs"] < summary["expected_runs"]:
        return f"incomplete ({summary['runs']}/{summary['expected_runs']} runs)"
    return summary["verdict"]


def cmd_list(args) -> int:
    cards = find(args.pattern)
    if args.json:
        print(json.dumps([{"id": c.id, "seed_id": c.seed_id, "name": c.name, "title": c.paper.title,
                           "family": c.family, "kind": c.kind, "arxiv": c.paper.arxiv,
                           "code_url": c.paper.code_url, "reproduction": c.reproduction,
                           "status": _status(c)} for c in cards], indent=1))
        return 0
    if not cards:
        print(f"no method matches {args.pattern!r}", file=sys.stderr)
        return 1
    rows = [(str(c.seed_id), c.id, c.name, c.family, c.kind, _status(c)) for c in cards]
    header = ("seed", "id", "name", "family", "kind", "reproduction")
    if args.markdown:
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for r in rows:
            print("| " + " | ".join(r) + " |")
        return 0
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    for r in (header, *rows):
        print("  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip())
    return 0


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
        claim = claim_of(card)
        out += ["reproduction:"] + [
            textwrap.fill(f"{label}: {text}", 96, initial_indent="  ", subsequent_indent="    ")
            for label, text in (("claim", claim.statement), ("setting (full tier)", claim.setting["full"]))]
        out.append(f"  run: priorlab reproduce {claim.method} --tier full    "
                   f"verdict (results/): {_status(card)}")
        summary = _full_summary(card)
        for t in (summary["comparisons"] + summary["guards"]) if summary else ():
            ci = "–" if t["ci_low"] is None else f"[{t['ci_low']:.4g}, {t['ci_high']:.4g}]"
            effect = "–" if t["effect"] is None else f"{t['effect']:+.4g}"
            out.append(f"    {t['method']} vs {t['baseline']} ({t['metric']}, {t['kind']}): effect "
                       f"{effect}, 95% CI {ci}, {t['n']} seeds -> {t['verdict']}")
    return "\n".join(out)


def cmd_info(args) -> int:
    print(render_card(get(args.id)))
    return 0


def cmd_reproduce(args) -> int:
    from priorlab.harness.runner import load_results, reproduction_cards, run_reproductions
    from priorlab.harness.summary import summarise

    if not args.ids and not args.all:
        raise PriorlabError("name at least one method id (or seed id), or pass --all")
    if args.jobs < 1:
        raise PriorlabError(f"--jobs must be at least 1, got {args.jobs}")
    results = Path(args.results) if args.results else DEFAULT_RESULTS[args.tier]
    cards = reproduction_cards(None if args.all else args.ids)
    try:
        run_reproductions(cards, tier=args.tier, results=results, n_seeds=args.seeds,
                          jobs=args.jobs, force=args.force)
    except KeyboardInterrupt:
        print(f"interrupted: finished runs are kept in {results}/; run the same command to resume",
              file=sys.stderr)
        return 130
    summaries = []
    for card in cards:
        claim, records = load_results(card, args.tier, results, args.seeds)
        n_seeds = args.seeds or claim.seeds[args.tier]
        summaries.append(summarise(claim, records, args.tier, n_seeds))
    if args.json:
        print(json.dumps(summaries, indent=1))
    else:
        for s in summaries:
            ci = "–" if s["ci_low"] is None else f"[{s['ci_low']:.4g}, {s['ci_high']:.4g}]"
            effect = "–" if s["effect"] is None else f"{s['effect']:+.4g}"
            print(f"{s['seed_id']:>3} {s['method']:<12} {s['tier']:<5} {s['metric']}: effect {effect} "
                  f"95% CI {ci} -> {s['verdict']}")
        print(f"results in {results}/", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    from priorlab.harness.report import write_report

    md, page, summaries = write_report(Path(args.results), Path(args.out))
    print(f"wrote {md} and {page} ({len(summaries)} reproductions)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="priorlab", description=__doc__)
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
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

    p = sub.add_parser("reproduce", help="run reproductions: arms x seeds, cached and resumable")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--all", action="store_true", help="every registered reproduction")
    p.add_argument("--tier", choices=TIERS, default="smoke")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the claim's)")
    p.add_argument("--jobs", type=int, default=1, help="parallel worker processes")
    p.add_argument("--results", default=None,
                   help="results folder (default: results/ for full, runs/smoke/ for smoke)")
    p.add_argument("--force", action="store_true", help="rerun and replace finished runs")
    p.add_argument("--json", action="store_true", help="one JSON object per paper")
    p.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS,
                   help="no progress bars (also accepted before the command)")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("report", help="write REPORT.md and report.html from a results folder")
    p.add_argument("--results", default=str(DEFAULT_RESULTS["full"]))
    p.add_argument("--out", default=".", help="folder for REPORT.md and report.html")
    p.set_defaults(func=cmd_report)

    add_flow_subparser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    set_quiet(args.quiet)
    try:
        return args.func(args)
    except PriorlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":
    sys.exit(main())
