"""REPORT.md and a self-contained HTML page, generated from result files only.

The output depends on nothing but the files under ``results`` and the code's claims and cards,
so regenerating it from the same files gives the same bytes (no timestamps, PNGs without
software metadata).
"""

from __future__ import annotations

import base64
import html
import math
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from priorlab.errors import PriorlabError  # noqa: E402
from priorlab.evidence import write_evidence  # noqa: E402
from priorlab.harness.registration import read_lock  # noqa: E402
from priorlab.harness.runner import claim_of, load_results, stored_tiers  # noqa: E402
from priorlab.harness.site import write_site  # noqa: E402
from priorlab.harness.summary import summarise  # noqa: E402
from priorlab.registry import get  # noqa: E402


def _fmt(x, digits=4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:.3e}"


def _plot(claim, records, arms, path: Path) -> None:
    curve_names = [c for c in claim.curves if any(c in r["curves"] for r in records)]
    panels = 1 + len(curve_names)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4), squeeze=False)
    axes = axes[0]
    colours = {arm: plt.cm.tab10(i % 10) for i, arm in enumerate(arms)}
    ax = axes[0]
    for i, arm in enumerate(arms):
        vals = [r["metrics"][claim.metric] for r in records if r["arm"] == arm]
        ax.scatter(np.full(len(vals), i) + np.linspace(-0.12, 0.12, len(vals)), vals,
                   color=colours[arm], s=18, zorder=3)
        if vals:
            ax.hlines(np.mean(vals), i - 0.3, i + 0.3, color=colours[arm], lw=2)
    ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(claim.metric)
    ax.set_title(f"{claim.metric} per seed ({'higher' if claim.higher_is_better else 'lower'} is better)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    for ax, name in zip(axes[1:], curve_names):
        for arm in arms:
            curves = [r["curves"][name] for r in records if r["arm"] == arm and name in r["curves"]]
            if not curves:
                continue
            n = min(len(c["y"]) for c in curves)
            x = np.asarray(curves[0]["x"][:n], dtype=float)
            ys = np.array([c["y"][:n] for c in curves], dtype=float)
            ax.plot(x, ys.mean(0), color=colours[arm], label=arm, lw=1.5)
            if len(curves) > 1:
                ax.fill_between(x, ys.min(0), ys.max(0), color=colours[arm], alpha=0.15, lw=0)
        ax.set_title(f"{name} (mean, band = min..max over seeds)", fontsize=9)
        ax.grid(alpha=0.3)
        xs = [v for r in records for v in r["curves"].get(name, {}).get("x", [])]
        if xs and min(xs) > 0 and max(xs) / min(xs) > 100:
            ax.set_xscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


def _plot_images(records, arms, path: Path) -> bool:
    """Seed 0's images per arm: every ``info`` entry named ``*_image`` (a 2-D list of values in
    [0, 1], e.g. a learned dictionary). Returns whether there was anything to draw."""
    first = {r["arm"]: r for r in records if r["seed"] == 0}
    names = sorted({k for r in first.values() for k in r["info"] if k.endswith("_image")})
    shown = [arm for arm in arms if arm in first]
    if not names or not shown:
        return False
    fig, axes = plt.subplots(len(names), len(shown), figsize=(3.2 * len(shown), 2.0 * len(names)),
                             squeeze=False)
    for i, name in enumerate(names):
        for j, arm in enumerate(shown):
            ax = axes[i][j]
            image = first[arm]["info"].get(name)
            if image is not None:
                ax.imshow(np.asarray(image, dtype=float), cmap="gray", vmin=0, vmax=1,
                          interpolation="nearest")
            ax.set_title(f"{arm}: {name.removesuffix('_image')} (seed 0)", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
    return True


def _history(results: Path, claim) -> tuple | None:
    lock = read_lock(results, claim)
    if lock is None:
        return None
    rows = []
    for h in lock["history"]:
        existed = {True: "yes", False: "no", None: "unknown"}[h.get("results_existed")]
        changed = h.get("changed")
        changed = "–" if changed is None else (", ".join(changed) or "none")
        rows.append([str(h["revision"]), h["reason"] + (f" ({h['note']})" if h.get("note") else ""),
                     changed, existed, (h.get("commit") or "–")[:12]])
    return ("table", ["revision", "reason", "fields changed", "full results existed", "commit"], rows)


def _sections(results: Path, out: Path) -> tuple[list, list[dict]]:
    """Report blocks: ("h", level, text) | ("p", text) | ("table", header, rows) | ("img", path)."""
    blocks: list = []
    summaries = []
    known = []
    for method_id, tier in stored_tiers(results):
        try:
            known.append((get(method_id), tier))
        except PriorlabError:
            print(f"warning: {results / method_id} is no registered method's results; skipped",
                  file=sys.stderr)
    for card, tier in sorted(known, key=lambda t: (t[0].seed_id, t[1])):
        claim = claim_of(card)
        n_seeds = claim.seeds[tier]  # the declared seeds; missing ones show as missing runs
        claim, records = load_results(card, tier, results, n_seeds)
        s = summarise(claim, records, tier, n_seeds)
        summaries.append(s)
        paper = card.paper
        blocks.append(("h", 2, f"{paper.seed_id} — {card.name} ({tier} tier): {s['status']}"))
        blocks.append(("p", f"**Paper**: {paper.title} — {paper.authors}, {paper.venue} {paper.year}, "
                            f"arXiv {paper.arxiv}. Card: `priorlab info {card.id}`."))
        blocks.append(("p", f"**Claim** (revision {claim.revision}): {claim.statement}"))
        if claim.paper_value:
            blocks.append(("p", f"**Paper reports**: {claim.paper_value}"))
        blocks.append(("p", f"**Setting**: {s['setting']}"))
        if tier == "full" and claim.budget:
            blocks.append(("p", f"**Budget**: {claim.budget.describe()}"
                                + (f" — {claim.budget.note}" if claim.budget.note else "")
                                + (" (**under the paper's budget**)" if claim.budget.under else "")))
        if len(s["cards"]) > 1:
            blocks.append(("p", "**Per method**: " + "; ".join(f"`{k}`: {v}" for k, v in s["cards"].items())))
        if tier == "smoke":
            blocks.append(("p", "*Smoke tier: a pipeline check at toy size; nothing is judged here. "
                                "The full tier is the evidence.*"))
        if s["clauses"]:
            blocks.append(("table", ["clause of the claim", "tested by", "untested because"],
                           [[c["clause"], ", ".join(c["tested_by"]) or "–", c["untested"] or "–"]
                            for c in s["clauses"]]))
        blocks.append(_arm_table(s, claim.arms_for(tier)))
        tests = s["comparisons"] + s["guards"]
        blocks.append(("table", ["comparison", "metric", "kind", "threshold", "n seeds",
                                 "effect", "95% CI", "verdict"],
                       [[t["label"], t["metric"], t["kind"], _fmt(t["threshold"]),
                         str(t["n"]), _fmt(t["effect"]), f"[{_fmt(t['ci_low'])}, {_fmt(t['ci_high'])}]",
                         t["verdict"] + (f" ({t['reason']})" if t["reason"] else "")] for t in tests]))
        plot = results / "plots" / f"{card.id}_{tier}.png"
        _plot(claim, records, claim.arms_for(tier), plot)
        blocks.append(("img", plot))
        images = results / "plots" / f"{card.id}_{tier}_images.png"
        if _plot_images(records, claim.arms_for(tier), images):
            blocks.append(("img", images))
        history = _history(results, claim) if tier == "full" else None
        if history:
            blocks.append(("p", "**Claim history** (the lock `claim.lock.json` beside the results):"))
            blocks.append(history)
        versions = "; ".join(", ".join(f"{k} {v}" for k, v in vs.items()) for vs in s["versions"])
        commits = ", ".join(c[:12] + ("+dirty" if c.endswith("+dirty") else "") for c in s["git_commits"])
        blocks.append(("p", f"Runs: {s['runs']}/{s['expected_runs']}, total run time {s['wall_time_s']} s; "
                            f"commits: {commits}; "
                            f"{versions}. Effects are method minus baseline, signed so that positive "
                            "favours the method; intervals are paired 95% t-intervals over seeds, "
                            "never narrower than the metric's resolution. Rerun: "
                            f"`priorlab reproduce {card.seed_id} --tier {tier}`; replicate on fresh "
                            f"seeds: `priorlab reproduce {card.seed_id} --tier {tier} --seed-start 100`."))
    return blocks, summaries


def _arm_table(summary: dict, arms) -> tuple:
    """Mean ± sd of every metric per arm; the longer of the two lists runs down the rows."""
    metrics = list(summary["arm_stats"][arms[0]])
    n = {arm: max(st["n"] for st in summary["arm_stats"][arm].values()) for arm in arms}

    def cell(arm, metric):
        st = summary["arm_stats"][arm][metric]
        return f"{_fmt(st['mean'])} ± {_fmt(st['std'], 2)}"

    if len(arms) >= len(metrics):
        return ("table", ["arm (seeds)"] + [f"{m} (mean ± sd)" for m in metrics],
                [[f"{arm} ({n[arm]})"] + [cell(arm, m) for m in metrics] for arm in arms])
    return ("table", ["metric (mean ± sd)"] + [f"{arm} ({n[arm]} seeds)" for arm in arms],
            [[m] + [cell(arm, m) for arm in arms] for m in metrics])


def _overview(summaries) -> tuple:
    rows = [[str(s["seed_id"]), s["method"], s["tier"], s["metric"], _fmt(s["effect"]),
             f"[{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]", s["status"],
             "; ".join(f"{k}: {v}" for k, v in s["cards"].items()) if len(s["cards"]) > 1 else "–",
             str(sum(1 for c in s["clauses"] if c["untested"] and not c["tested_by"]))]
            for s in summaries]
    return ("table", ["seed id", "method", "tier", "metric", "effect (first comparison)", "95% CI",
                      "verdict", "per method", "untested clauses"], rows)


def _markdown(blocks, out: Path) -> str:
    lines = []
    for b in blocks:
        if b[0] == "h":
            lines += ["#" * b[1] + " " + b[2], ""]
        elif b[0] == "p":
            lines += [b[1], ""]
        elif b[0] == "table":
            lines.append("| " + " | ".join(b[1]) + " |")
            lines.append("|" + "---|" * len(b[1]))
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in b[2]]
            lines.append("")
        elif b[0] == "img":
            lines += [f"![plot]({Path(os.path.relpath(b[1], out)).as_posix()})", ""]
    return "\n".join(lines)


def _inline_md(text: str) -> str:
    """Escape, then render the two inline forms the report uses: **bold** and `code`."""
    parts = html.escape(text).split("**")
    text = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _html(blocks) -> str:
    body = []
    for b in blocks:
        if b[0] == "h":
            body.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            body.append(f"<p>{_inline_md(b[1])}</p>")
        elif b[0] == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                           for row in b[2])
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif b[0] == "img":
            data = base64.b64encode(Path(b[1]).read_bytes()).decode()
            body.append(f'<img alt="plot" src="data:image/png;base64,{data}">')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "font-size:90%}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>priorlab report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def write_report(results: Path, out: Path, *, evidence: Path | None = None) -> tuple[Path, Path, list[dict]]:
    """Write ``out/REPORT.md``, ``out/report.html`` and the site ``out/site/`` from ``results``;
    with ``evidence``, also the compact summary the package ships there. Return paths and summaries."""
    results, out = Path(results), Path(out)
    sections, summaries = _sections(results, out)
    intro = [("h", 1, "priorlab — reproduction report"),
             ("p", f"Generated by `priorlab report` from the result files in "
                   f"`{Path(os.path.relpath(results, out)).as_posix()}`; "
                   "never edited by hand. Verdicts follow the one rule in `priorlab.harness.verdict`: "
                   "superiority claims need the mean paired effect at or above the declared minimum and "
                   "a 95% interval excluding zero; non-inferiority claims need the interval's lower end "
                   "above minus the declared margin; guard metrics must hold too. Intervals are never "
                   "narrower than the metric's resolution; a negative result below the paper's "
                   "training budget, or with an arm tuned at the edge of its grid, is inconclusive. "
                   "Each claim was registered (frozen) before its first full-tier result; its "
                   "history lists every later revision and its reason. Provenance (commit, library "
                   "versions, BLAS, CPU) closes each section.")]
    if not summaries:
        intro.append(("p", "No results found."))
    blocks = intro + ([_overview(summaries)] if summaries else []) + sections
    out.mkdir(parents=True, exist_ok=True)
    md, page = out / "REPORT.md", out / "report.html"
    md.write_text(_markdown(blocks, out))
    page.write_text(_html(blocks))
    write_site(results, out, summaries)
    if evidence is not None:
        write_evidence(summaries, evidence)
    return md, page, summaries
