"""The evidence site's stylesheet and script, written beside its pages (no network, no CDN).

The script only sorts and filters the index table; every page reads the same without it.
"""

STYLE = """\
:root { --ok: #1a7f37; --bad: #c62828; --maybe: #9a6700; --none: #57606a; --info: #0969da;
  --line: #d0d7de; --soft: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
  margin: 0 auto; max-width: 82rem; padding: 1rem 1.25rem 3rem; }
header nav { font-size: .9rem; margin-bottom: .5rem; }
header nav a + a { margin-left: 1rem; }
h1 { font-size: 1.6rem; line-height: 1.25; margin: .5rem 0 .25rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 .5rem; padding-bottom: .2rem; border-bottom: 1px solid var(--line); }
h3 { font-size: 1rem; margin: 1.2rem 0 .3rem; }
p, li { max-width: 60rem; }
a { color: var(--info); }
code, pre { font: .88em/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { background: var(--soft); border: 1px solid var(--line); padding: .6rem .8rem; overflow-x: auto; }
.cite { color: #57606a; margin-top: 0; }
.scroll { overflow-x: auto; margin: .5rem 0 1rem; }
table { border-collapse: collapse; font-size: .9rem; }
th, td { border-bottom: 1px solid var(--line); padding: .35rem .6rem; text-align: left; vertical-align: top; }
thead th { background: var(--soft); position: sticky; top: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:hover { background: #f3f6fa; }
#papers { width: 100%; }
#papers td.paper { min-width: 15rem; }
table.arms td:first-child { white-space: nowrap; }
th button { all: unset; cursor: pointer; font-weight: 600; }
th button::after { content: " \\2195"; color: #8c959f; font-weight: 400; }
th[aria-sort="ascending"] button::after { content: " \\2191"; color: inherit; }
th[aria-sort="descending"] button::after { content: " \\2193"; color: inherit; }
th button:focus-visible { outline: 2px solid var(--info); }
.badge { display: inline-block; padding: .05rem .5rem; border-radius: 1rem; color: #fff; font-size: .82rem;
  font-weight: 600; white-space: nowrap; background: var(--none); }
.badge.reproduced { background: var(--ok); }
.badge.not-reproduced { background: var(--bad); }
.badge.inconclusive { background: var(--maybe); }
.badge.pipeline-ok { background: var(--info); }
.badge.not-run { background: #fff; color: var(--none); border: 1px solid var(--none); }
.marker { display: inline-block; font-size: .78rem; border: 1px solid currentColor; border-radius: .3rem;
  padding: 0 .35rem; margin: .1rem .2rem .1rem 0; white-space: nowrap; }
.marker.budget { color: var(--maybe); }
.marker.untested { color: var(--none); }
.reason { display: block; color: #57606a; font-size: .82rem; }
.counts { display: flex; flex-wrap: wrap; gap: .5rem 1.25rem; list-style: none; padding: 0; }
.counts b { font-size: 1.1rem; margin-left: .3rem; }
form.filters { display: flex; flex-wrap: wrap; gap: .5rem 1.5rem; align-items: end; margin: 1rem 0 .25rem;
  padding: .6rem .8rem; background: var(--soft); border: 1px solid var(--line); }
form.filters label { display: flex; flex-direction: column; font-size: .85rem; font-weight: 600; }
form.filters select { font: inherit; font-weight: 400; padding: .2rem; min-width: 12rem; }
.muted { color: #57606a; font-size: .85rem; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { font-size: .85rem; color: #57606a; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; }
dl.facts dt { font-weight: 600; }
dl.facts dd { margin: 0; }
@media (max-width: 700px) {
  body { padding: .5rem .6rem 2rem; font-size: 15px; }
  .wide-only { display: none; }
  dl.facts { grid-template-columns: 1fr; }
  dl.facts dd { margin-bottom: .4rem; }
  form.filters select { min-width: 9rem; }
  /* the index as one card per paper: title first, then the cells that fit on a line */
  #papers thead { display: none; }
  #papers caption { display: block; text-align: left; }
  #papers, #papers tbody { display: block; }
  #papers tr { display: flex; flex-wrap: wrap; align-items: baseline; gap: .2rem .8rem;
    padding: .6rem 0; border-bottom: 1px solid var(--line); }
  #papers tr[hidden] { display: none; }
  #papers td { border: 0; padding: 0; text-align: left; }
  #papers td.paper { flex: 1 1 100%; order: -1; min-width: 0; }
  #papers td[data-label]::before { content: attr(data-label) " "; color: #57606a; font-size: .8rem; }
}
@media print {
  header nav, form.filters, th button::after { display: none; }
  body { max-width: none; font-size: 11pt; }
  a { color: inherit; }
  .badge { color: #000; background: none !important; border: 1px solid #000; }
  thead th { position: static; }
  .scroll { overflow: visible; }
  .wide-only { display: none; }
  td.num { white-space: normal; }
  #papers td.paper { min-width: 0; }
  figure, table { break-inside: avoid; }
}
"""

# Sorting: a cell's data-sort value when it has one, else its text; numbers compare as numbers
# and blank cells ("–") go last in either direction.
# Filtering: rows carry data-family and data-verdict; the form starts hidden and shows when this runs.
SCRIPT = """\
"use strict";
(function () {
  var table = document.getElementById("papers");
  var form = document.getElementById("filters");
  if (!table || !form) { return; }
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var family = document.getElementById("filter-family");
  var verdict = document.getElementById("filter-verdict");
  var shown = document.getElementById("shown");
  function apply() {
    var n = 0;
    rows.forEach(function (row) {
      var keep = (!family.value || row.dataset.family === family.value) &&
                 (!verdict.value || row.dataset.verdict === verdict.value);
      row.hidden = !keep;
      if (keep) { n += 1; }
    });
    shown.textContent = n + " of " + rows.length + " papers shown";
  }
  function key(row, col) {
    var cell = row.cells[col];
    var value = (cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent).trim();
    if (value === "" || value === "\u2013") { return null; }
    return isFinite(value) ? parseFloat(value) : value.toLowerCase();
  }
  function sortBy(th, col) {
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) { c.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    rows.sort(function (a, b) {
      var x = key(a, col), y = key(b, col);
      if (x === null || y === null) { return (x === null) - (y === null); }  // blanks last
      if (typeof x !== typeof y) { return typeof x === "number" ? -1 : 1; }
      return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
    var button = document.createElement("button");
    button.type = "button";
    button.textContent = th.textContent;
    button.title = "sort by " + th.textContent;
    button.addEventListener("click", function () { sortBy(th, col); });
    th.textContent = "";
    th.appendChild(button);
  });
  family.addEventListener("change", apply);
  verdict.addEventListener("change", apply);
  form.addEventListener("submit", function (e) { e.preventDefault(); });
  form.hidden = false;
  apply();
}());
"""
