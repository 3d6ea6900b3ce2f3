/* The jobs dashboard: live overview (polls the stats JSON), an SVG chart, confirmations and
   "select all" for the bulk actions. No dependencies, no external requests. */
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) { parent.appendChild(node); }
    return node;
  }

  // Processed and failed per day as two lines, scaled to the largest day.
  function drawChart(box, history) {
    var w = 600, h = 200, left = 40, bottom = 20, top = 10;
    var max = 1;
    history.forEach(function (d) { max = Math.max(max, d.processed, d.failed); });
    var svg = el("svg", { viewBox: "0 0 " + w + " " + h, preserveAspectRatio: "none" });
    var x = function (i) { return left + i * (w - left - 10) / Math.max(1, history.length - 1); };
    var y = function (v) { return h - bottom - v * (h - bottom - top) / max; };
    el("line", { x1: left, y1: h - bottom, x2: w - 10, y2: h - bottom, "class": "aj-axis" }, svg);
    el("line", { x1: left, y1: top, x2: left, y2: h - bottom, "class": "aj-axis" }, svg);
    el("text", { x: 2, y: top + 8 }, svg).textContent = String(max);
    el("text", { x: 2, y: h - bottom }, svg).textContent = "0";
    if (history.length) {
      el("text", { x: left, y: h - 4 }, svg).textContent = history[0].date;
      el("text", { x: w - 70, y: h - 4 }, svg).textContent = history[history.length - 1].date;
    }
    ["processed", "failed"].forEach(function (series) {
      var points = history.map(function (d, i) { return x(i).toFixed(1) + "," + y(d[series]).toFixed(1); });
      el("polyline", { points: points.join(" "), "class": "aj-line-" + series }, svg);
      history.forEach(function (d, i) {
        var dot = el("circle", { cx: x(i), cy: y(d[series]), r: 2.5, "class": "aj-line-" + series }, svg);
        el("title", {}, dot).textContent = d.date + ": " + d[series] + " " + series;
      });
    });
    box.replaceChildren(svg);
  }

  function liveOverview() {
    var select = document.getElementById("aj-refresh");
    var chart = document.getElementById("aj-chart");
    var initial = document.getElementById("aj-history");
    if (!select || !chart) { return; }
    if (initial) { drawChart(chart, JSON.parse(initial.textContent)); }
    var timer = null;
    var updated = document.getElementById("aj-updated");

    function refresh() {
      fetch(select.dataset.statsUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.json(); })
        .then(function (data) {
          Object.keys(data.stats).forEach(function (name) {
            document.querySelectorAll('[data-stat="' + name + '"]').forEach(function (node) {
              node.textContent = String(data.stats[name]);
            });
          });
          drawChart(chart, data.history);
          updated.textContent = "updated " + new Date().toLocaleTimeString();
          updated.dataset.updates = String(Number(updated.dataset.updates || 0) + 1);
        })
        .catch(function (err) { updated.textContent = "refresh failed (" + err.message + ")"; });
    }

    function schedule() {
      if (timer) { clearInterval(timer); timer = null; }
      var seconds = Number(select.value);
      if (seconds > 0) { timer = setInterval(refresh, seconds * 1000); }
    }
    select.addEventListener("change", schedule);
    schedule();
  }

  function confirmations() {
    document.addEventListener("click", function (event) {
      var button = event.target.closest("[data-confirm]");
      if (button && !window.confirm(button.dataset.confirm)) { event.preventDefault(); }
    });
    document.querySelectorAll(".aj-check-all").forEach(function (box) {
      box.addEventListener("change", function () {
        box.closest("table").querySelectorAll('input[name="ref"]').forEach(function (item) {
          item.checked = box.checked;
        });
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    liveOverview();
    confirmations();
  });
})();
