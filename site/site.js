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
    if (value === "" || value === "–") { return null; }
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
