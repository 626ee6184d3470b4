"""The evidence as a static site: an index of every registered reproduction and one page per paper.

Written by ``priorlab report`` into ``<out>/site/`` beside REPORT.md, from the same summaries and
nothing else, so the same result files give the same bytes (no timestamps, sorted output). Pages
open from the file system: no server, no network; the stylesheet and the small sorting/filtering
script sit beside them and the pages read the same without the script.
"""

from __future__ import annotations

import html
import math
import os
import shutil
from pathlib import Path

from priorlab.harness.registration import read_lock
from priorlab.harness.runner import claim_of, reproduction_cards
from priorlab.harness.site_assets import SCRIPT, STYLE
from priorlab.harness.summary import clause_table
from priorlab.registry import all_cards

SCENE_FLOW_METHOD = "nsfp"
# The setting prefixes of the scene-flow arms, real data first (arms are named <setting>_<method>).
SCENE_FLOW_SETTINGS = {"av2": "Argoverse 2 pair (real lidar), raw",
                       "av2ego": "Argoverse 2 pair (real lidar), ego-motion compensated",
                       "syn": "synthetic lidar pairs"}
VERDICT_CLASSES = ("reproduced", "not reproduced", "inconclusive", "incomplete", "pipeline ok", "not run")


def _places(x: float, resolution: float | None, sig: int) -> int:
    """Decimal places worth printing: down to the resolution's leading digit, at most ``sig``
    significant digits of ``x``; without a resolution, ``sig - 1`` significant digits."""
    cap = sig - 1 - math.floor(math.log10(abs(x))) if x else sig - 1
    if resolution and math.isfinite(resolution) and resolution > 0:
        return min(-math.floor(math.log10(resolution)), cap)
    return cap


def _fixed(x: float, places: int) -> str:
    text = f"{x:.{places}f}" if places >= 0 else f"{round(x, places):.0f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.000"


def round_to_resolution(x, resolution: float | None = None, *, signed: bool = False, sig: int = 5) -> str:
    """``x`` with the digits that mean something: rounded to the decimal place of the metric's
    resolution (1/n for an accuracy on n items), never more than ``sig`` significant digits;
    without a resolution, 4 significant digits. None and non-finite values print as "–"."""
    if x is None or not math.isfinite(x):
        return "–"
    if x == 0 and not resolution:
        return "0"
    if abs(x) >= 1e6 or (x and abs(x) < 1e-4 and not resolution):
        text = f"{x:.3g}"
    else:
        text = _fixed(x, _places(x, resolution, sig if resolution else 4))
    return f"+{text}" if signed and float(text) > 0 else text


def mean_sd(mean, sd, resolution: float | None = None) -> str:
    """"mean ± sd", the sd to two significant digits but never finer than the mean's last digit;
    a spread below that digit prints as "< 0.001" rather than float noise such as 2.7e-16."""
    text = round_to_resolution(mean, resolution)
    if sd is None or mean is None or not (math.isfinite(sd) and math.isfinite(mean)):
        return text
    if sd == 0 or "e" in text:  # an exact zero, or a mean too small or large for fixed digits
        return f"{text} ± {sd:.2g}"
    places = _places(mean, resolution, 5 if resolution else 4)
    step = 10.0 ** -places
    if sd < step / 2:
        return f"{text} ± < {_fixed(step, max(places, 0))}"
    return f"{text} ± {_fixed(sd, min(places, 1 - math.floor(math.log10(sd))))}"


def verdict_class(status: str) -> str:
    """The verdict family of a status line, e.g. "inconclusive (under the paper's budget: ...)"."""
    for name in ("not reproduced", "reproduced", "inconclusive", "pipeline ok", "not run"):
        if status.startswith(name):
            return name
    return "incomplete"


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _inline(text: str) -> str:
    """Escape, then render `code` spans (the cards and claims use them)."""
    parts = _esc(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _paragraphs(text: str) -> str:
    return "".join(f"<p>{_inline(p.strip())}</p>" for p in text.strip().split("\n\n") if p.strip())


def badge(status: str) -> str:
    kind = verdict_class(status)
    return f'<span class="badge {kind.replace(" ", "-")}">{_esc(kind)}</span>'


def _status_cell(status: str) -> str:
    kind = verdict_class(status)
    rest = status[len(kind):].strip(" ()") if status.startswith(kind) else status
    return badge(status) + (f'<span class="reason">{_esc(rest)}</span>' if rest else "")


def _table(header, rows, *, numeric=(), caption="", attrs="") -> str:
    head = "".join(f'<th scope="col"{" class=num" if i in numeric else ""}>{_esc(h)}</th>'
                   for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{c}</td>'
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    cap = f"<caption class=muted>{_esc(caption)}</caption>" if caption else ""
    return (f'<div class="scroll"><table{attrs}>{cap}<thead><tr>{head}</tr></thead>'
            f'<tbody>{body}</tbody></table></div>')


def _page(title: str, body: str, depth: int, script: bool = False) -> str:
    up = "../" * depth
    js = f'<script src="{up}site.js"></script>' if script else ""
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_esc(title)}</title><link rel=\"stylesheet\" href=\"{up}style.css\"></head>\n<body>"
            f"<header><nav><a href=\"{up}index.html\">All papers</a>"
            f"<a href=\"{up}../REPORT.md\">REPORT.md</a>"
            f"</nav></header>\n<main>\n{body}\n</main>\n{js}</body></html>\n")


def _markers(summary: dict | None) -> str:
    if not summary:
        return ""
    out = []
    if summary["under_budget"]:
        out.append(f'<span class="marker budget" title="{_esc(summary["budget"] or "")}">under budget</span>')
    n = sum(1 for c in summary["clauses"] if c["untested"] and not c["tested_by"])
    if n:
        out.append(f'<span class="marker untested">{n} untested clause{"s" if n > 1 else ""}</span>')
    return "".join(out)


def _effect(summary: dict | None) -> tuple[str, str]:
    """The headline effect with its interval, and its sort key."""
    if not summary or not summary["comparisons"]:
        return "–", ""
    t = summary["comparisons"][0]
    res = t.get("resolution") or None
    if t["effect"] is None:
        return "–", ""
    text = (f'{round_to_resolution(t["effect"], res, signed=True)} '
            f'[{round_to_resolution(t["ci_low"], res)}, {round_to_resolution(t["ci_high"], res)}]'
            f'<span class="reason">{_esc(t["metric"])}</span>')
    return text, repr(t["effect"])


def _index(entries: list[dict], shown: str, sceneflow: bool) -> str:
    counts = {v: 0 for v in VERDICT_CLASSES}
    for e in entries:
        counts[e["verdict"]] += 1
    count_items = "".join(f"<li>{badge(v)}<b>{n}</b></li>" for v, n in counts.items() if n)
    families = sorted({e["card"].family for e in entries})
    rows = []
    for e in entries:
        card, s = e["card"], e["summary"]
        effect, effect_key = _effect(s)
        seeds = str(s["comparisons"][0]["n"]) if s and s["comparisons"] else "–"
        rows.append(
            f'<tr data-family="{_esc(card.family)}" data-verdict="{_esc(e["verdict"])}">'
            f'<td class=num data-label="seed">{card.seed_id}</td>'
            f'<td class="paper"><a href="papers/{e["slug"]}.html">{_esc(card.paper.title)}</a>'
            f'<span class="reason">{_esc(card.name)}</span></td>'
            f'<td>{_esc(card.family)}</td><td class="wide-only">{_esc(card.kind)}</td>'
            f'<td data-sort="{VERDICT_CLASSES.index(e["verdict"])}">{badge(e["status"])}</td>'
            f'<td class=num data-sort="{effect_key}">{effect}</td>'
            f'<td class="num wide-only">{seeds}</td><td>{_markers(s)}</td></tr>')
    head = "".join(f'<th scope="col"{c}>{h}</th>' for h, c in (
        ("seed", ' class=num aria-sort="ascending"'), ("paper", ""), ("family", ""),
        ("kind", ' class="wide-only"'), ("verdict", ""), ("effect [95% CI]", " class=num"),
        ("seeds", ' class="num wide-only"'), ("markers", "")))
    options = lambda values: "".join(f'<option value="{_esc(v)}">{_esc(v)}</option>' for v in values)  # noqa: E731
    flow = ('<p>Scene flow: <a href="sceneflow.html">the real-data table and pictures</a>.</p>'
            if sceneflow else "")
    body = (
        "<h1>priorlab — the evidence</h1>"
        f"<p>Every registered reproduction with its pre-registered claim and its verdict from the result "
        f"files in <code>{_esc(shown)}</code>. Effects are method minus baseline, signed so "
        "that positive favours the method, with paired 95% intervals over seeds; a negative result "
        "under the paper's training budget is inconclusive. Each paper's page has the claim, its "
        "clauses, the numbers, the plots, the claim's history and the command that reruns it.</p>"
        f'<section aria-label="verdict counts"><ul class="counts">{count_items}</ul></section>'
        '<form id="filters" class="filters" hidden aria-controls="papers">'
        f'<label>Family<select id="filter-family"><option value="">all families</option>{options(families)}'
        '</select></label><label>Verdict<select id="filter-verdict"><option value="">all verdicts</option>'
        f'{options(v for v in VERDICT_CLASSES if counts[v])}</select></label>'
        '<output id="shown" class="muted" aria-live="polite"></output></form>'
        f'<div class="scroll"><table id="papers"><caption class=muted>{len(entries)} papers; markers: '
        "trained under the paper's budget, clauses of the claim not tested here</caption>"
        f'<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>{flow}')
    return _page("priorlab — the evidence", body, 0, script=True)


def _arm_table(summary: dict, arms) -> str:
    """Mean ± sd of every metric per arm, rounded to each metric's resolution; the longer of
    the two lists runs down the rows."""
    stats = summary["arm_stats"]
    metrics = list(stats[arms[0]]) if arms else []
    n = {arm: max((st["n"] for st in stats[arm].values()), default=0) for arm in arms}

    def cell(arm, metric):
        st = stats[arm][metric]
        return _esc(mean_sd(st["mean"], st["std"], st.get("resolution")))

    if len(arms) >= len(metrics):
        return _table(["arm (seeds)", *metrics], [[f"{_esc(a)} ({n[a]})"] + [cell(a, m) for m in metrics]
                                                 for a in arms],
                      numeric=range(1, len(metrics) + 1), caption="mean ± sd over seeds",
                      attrs=' class="arms"')
    return _table(["metric", *(f"{a} ({n[a]} seeds)" for a in arms)],
                  [[_esc(m)] + [cell(a, m) for a in arms] for m in metrics],
                  numeric=range(1, len(arms) + 1), caption="mean ± sd over seeds", attrs=' class="arms"')


def _tests_table(tests: list[dict]) -> str:
    rows = []
    for t in tests:
        res = t.get("resolution") or None
        rows.append([_esc(t["label"]), _esc(t["metric"]), _esc(t["kind"]),
                     f'{t["threshold"]:g}', str(t["n"]),  # as declared
                     round_to_resolution(t["effect"], res, signed=True),
                     f'[{round_to_resolution(t["ci_low"], res)}, {round_to_resolution(t["ci_high"], res)}]',
                     badge(t["verdict"]) + (f'<span class="reason">{_esc(t["reason"])}</span>'
                                            if t.get("reason") else "")])
    return _table(["comparison", "metric", "kind", "threshold", "seeds", "effect", "95% CI", "verdict"],
                  rows, numeric=(3, 4, 5, 6))


def _history(lock: dict | None) -> str:
    if lock is None:
        return "<p>No claim lock: the claim has not been registered by a full-tier run.</p>"
    rows = []
    for h in lock["history"]:
        changed = (", ".join(h["changed"]) if h.get("changed")
                   else "–" if h.get("changed") is None else "none")
        existed = {True: "yes", False: "no", None: "unknown"}[h.get("results_existed")]
        rows.append([str(h["revision"]), _esc(h["reason"]) + (f'<span class="reason">{_esc(h["note"])}</span>'
                                                            if h.get("note") else ""),
                     _esc(changed), existed, f'<code>{_esc((h.get("commit") or "–")[:12])}</code>'])
    return _table(["revision", "reason", "fields changed", "full-tier results existed", "commit"], rows)


def _figures(e: dict) -> str:
    out = []
    if e["plot"]:
        out.append(f'<figure><img src="../plots/{e["plot"]}" alt="{_esc(e["claim"].metric)} per seed for '
                   'each arm, and the recorded curves per arm"><figcaption>Left: the primary metric per seed '
                   "(bar = mean). Right: curves, mean over seeds with the min–max band."
                   "</figcaption></figure>")
    if e["images"]:
        out.append(f'<figure><img src="../plots/{e["images"]}" alt="images per arm, seed 0">'
                   "<figcaption>Images each arm recorded for seed 0 (samples, reconstructions or "
                   "learned atoms).</figcaption></figure>")
    for name in e["figures"]:
        out.append(f'<figure><img src="../plots/{e["method"]}/{name}" alt="{_esc(name)}">'
                   f"<figcaption>{_esc(name)}</figcaption></figure>")
    return "".join(out) or "<p>No plots: no results in this folder.</p>"


def _paper_page(e: dict, shown: str) -> str:
    card, claim, s = e["card"], e["claim"], e["summary"]
    p = card.paper
    tier = s["tier"] if s else "full"
    links = [f'<a href="https://arxiv.org/abs/{_esc(p.arxiv)}">arXiv {_esc(p.arxiv)}</a>'] if p.arxiv else []
    if p.code_url:
        links.append(f'<a href="{_esc(p.code_url)}">official code</a> ({_esc(p.licence)})')
    parts = [f"<h1>{p.seed_id} — {_esc(card.name)}</h1>",
             f'<p class="cite">{_esc(p.title)} — {_esc(p.authors)}, {_esc(p.venue)} {p.year}. '
             f'{" · ".join(links)}</p>',
             f"<p>{_status_cell(e['status'])} {_markers(s)}"
             + (f' <span class="muted">({_esc(tier)} tier: a pipeline check, nothing is judged)</span>'
                if tier == "smoke" else "") + "</p>"]
    if s and len(s["cards"]) > 1:
        parts.append("<ul>" + "".join(f"<li><code>{_esc(k)}</code>: {_status_cell(v)}</li>"
                                      for k, v in s["cards"].items()) + "</ul>")
    clauses = s["clauses"] if s else clause_table(claim)
    parts += [f"<h2>Claim <small class=muted>(revision {claim.revision})</small></h2>",
              f"<p>{_inline(claim.statement)}</p>",
              _table(["clause of the claim", "tested by", "untested because"],
                     [[_inline(c["clause"]), _esc(", ".join(c["tested_by"]) or "–"),
                       _esc(c["untested"] or "–")] for c in clauses]) if clauses else ""]
    if claim.paper_value:
        parts.append(f"<h3>What the paper reports</h3><p>{_inline(claim.paper_value)}</p>")
    setting = s["setting"] if s else claim.setting.get("full", "")
    parts.append(f"<h2>Setting <small class=muted>({_esc(tier)} tier)</small></h2><p>{_inline(setting)}</p>")
    if claim.budget:
        parts.append(f"<p><b>Budget</b>: {_esc(claim.budget.describe())}"
                     + (f" — {_inline(claim.budget.note)}" if claim.budget.note else "")
                     + (' <span class="marker budget">under the paper\'s budget</span>' if claim.budget.under
                        else "") + "</p>")
    for c in e["cards"]:
        if c.deviations.strip():
            parts.append(f"<h3>Deviations from the paper (card <code>{_esc(c.id)}</code>)</h3>"
                         + _paragraphs(c.deviations))
    parts.append("<h2>Results</h2>")
    if s:
        parts += [_tests_table(s["comparisons"] + s["guards"]), "<h3>Arms</h3>",
                  _arm_table(s, claim.arms_for(tier))]
    else:
        parts.append(f"<p>No results for this claim in <code>{_esc(shown)}</code>.</p>")
    parts += ["<h2>Plots</h2>", _figures(e), "<h2>Claim history</h2>",
              "<p class=muted>From <code>claim.lock.json</code> beside the results: the claim was frozen "
              "before its first full-tier run; every later change is a revision with its reason.</p>",
              _history(e["lock"])]
    if s:
        versions = "".join(f"<li>{_esc(', '.join(f'{k} {v}' for k, v in vs.items()))}</li>"
                           for vs in s["versions"])
        parts.append(
            '<h2>Provenance</h2><dl class="facts">'
            f"<dt>runs</dt><dd>{s['runs']} of {s['expected_runs']}, {s['wall_time_s']} s of run time</dd>"
            f"<dt>commits</dt><dd>{', '.join(f'<code>{_esc(c[:12])}</code>' for c in s['git_commits'])}</dd>"
            f"<dt>environment</dt><dd><ul>{versions}</ul></dd>"
            f"<dt>results</dt><dd><code>{_esc(shown)}/{_esc(claim.method)}/{tier}</code></dd></dl>")
    parts.append("<h2>Rerun it</h2><pre><code>"
                 f"priorlab reproduce {p.seed_id} --tier full\n"
                 f"# replicate on fresh seeds, beside the committed verdict:\n"
                 f"priorlab reproduce {p.seed_id} --tier full --seed-start 100</code></pre>"
                 f"<p>The card: <code>priorlab info {_esc(card.id)}</code>.</p>")
    return _page(f"{p.seed_id} — {card.name}: {e['verdict']}", "\n".join(parts), 1)


def _sceneflow_page(e: dict) -> str:
    s = e["summary"]
    arms = e["claim"].arms_for(s["tier"])
    parts = ["<h1>Scene flow — Neural Scene Flow Prior on real and synthetic lidar</h1>",
             f'<p>{_status_cell(e["status"])} The claim, its comparisons and history: '
             f'<a href="papers/{e["slug"]}.html">paper {e["card"].seed_id}</a>. End-point errors in metres '
             "on the fitted points of the first cloud (|x|, |y| ≤ 50 m, not ground), mean ± sd over seeds; "
             "lower is better for the errors, higher for the accuracies.</p>"]
    for prefix, title in SCENE_FLOW_SETTINGS.items():
        own = [a for a in arms if a.startswith(prefix + "_")]
        if own:
            parts += [f"<h2>{_esc(title)}</h2>", _arm_table(s, own)]
    if e["figures"]:
        parts += ["<h2>Bird's-eye views</h2>", _figures({**e, "plot": None})]
    else:
        parts.append("<h2>Bird's-eye views</h2><p>No bird's-eye pictures are stored with these results "
                     f"(<code>{SCENE_FLOW_METHOD}/figures/*.png</code>); "
                     "<code>priorlab flow demo --out DIR</code> draws them for a synthetic scene.</p>")
    return _page("priorlab — scene flow", "\n".join(parts), 0)


def _entries(results: Path, summaries: list[dict]) -> list[dict]:
    by_method: dict[str, dict] = {}
    for s in summaries:  # the full tier is the evidence; a smoke-only folder shows its pipeline checks
        if s["method"] not in by_method or s["tier"] == "full":
            by_method[s["method"]] = s
    entries = []
    for owner in reproduction_cards():
        claim = claim_of(owner)
        s = by_method.get(claim.method)
        plot = f"{claim.method}_{s['tier']}.png" if s else None
        images = f"{claim.method}_{s['tier']}_images.png" if s else None
        figures = results / claim.method / "figures"
        entries.append({
            "card": owner, "claim": claim, "method": claim.method, "summary": s,
            "slug": f"{owner.seed_id}-{claim.method}",
            "cards": [c for c in all_cards() if c.reproduction and claim_of(c).method == claim.method],
            "status": s["status"] if s else "not run",
            "verdict": verdict_class(s["status"]) if s else "not run",
            "plot": plot if plot and (results / "plots" / plot).is_file() else None,
            "images": images if images and (results / "plots" / images).is_file() else None,
            "figures": sorted(p.name for p in figures.glob("*.png")) if figures.is_dir() else [],
            "lock": read_lock(results, claim) if s and s["tier"] == "full" else None})
    return sorted(entries, key=lambda e: (e["card"].seed_id, e["method"]))


def _clear(site: Path) -> None:
    """Remove what an earlier run wrote (only the kinds of files this module writes)."""
    for pattern in ("*.html", "style.css", "site.js", "papers/*.html", "plots/*.png", "plots/*/*.png"):
        for path in site.glob(pattern):
            path.unlink()


def write_site(results: Path, out: Path, summaries: list[dict]) -> Path:
    """Write ``out/site/`` from the report's summaries of ``results``; return the index path."""
    results, site = Path(results), Path(out) / "site"
    entries = _entries(results, summaries)
    shown = Path(os.path.relpath(results.resolve(), site.parent.resolve())).as_posix()  # as REPORT.md sees it
    _clear(site)
    (site / "papers").mkdir(parents=True, exist_ok=True)
    (site / "plots").mkdir(exist_ok=True)
    (site / "style.css").write_text(STYLE, encoding="utf-8")
    (site / "site.js").write_text(SCRIPT, encoding="utf-8")
    flow = next((e for e in entries if e["method"] == SCENE_FLOW_METHOD and e["summary"]), None)
    for e in entries:
        for plot in (e["plot"], e["images"]):
            if plot:
                shutil.copyfile(results / "plots" / plot, site / "plots" / plot)
        if e["figures"]:
            (site / "plots" / e["method"]).mkdir(exist_ok=True)
            for name in e["figures"]:
                shutil.copyfile(results / e["method"] / "figures" / name, site / "plots" / e["method"] / name)
        (site / "papers" / f"{e['slug']}.html").write_text(_paper_page(e, shown), encoding="utf-8")
    if flow:
        (site / "sceneflow.html").write_text(_sceneflow_page(flow), encoding="utf-8")
    index = site / "index.html"
    index.write_text(_index(entries, shown, flow is not None), encoding="utf-8")
    return index
