/* The jobs dashboard: live overview (polls the stats JSON), two SVG charts drawn at the box's
   own size (no stretching), confirmations, "select all" and long values shown whole on demand.
   No dependencies, no external requests. */
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var REALTIME_POINTS = 60;

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) { parent.appendChild(node); }
    return node;
  }

  // A top for the y axis whose four ticks are round numbers (1, 2 or 5 times a power of ten).
  function niceMax(value) {
    var step = Math.max(1, value / 4);
    var power = Math.pow(10, Math.floor(Math.log10(step)));
    var steps = [1, 2, 5, 10];
    for (var i = 0; i < steps.length; i++) { if (steps[i] * power >= step) { return 4 * steps[i] * power; } }
    return 40 * power;
  }

  function short(n) {
    if (n >= 1e6) { return (n / 1e6).toFixed(n % 1e6 ? 1 : 0) + "M"; }
    if (n >= 1e4) { return (n / 1e3).toFixed(0) + "k"; }
    return String(n);
  }

  // points: [{label, processed, failed, ...}], drawn in a viewBox of the box's pixel size: text
  // and dots keep their shape at any width. options.series: the keys drawn, first below (by
  // default failed, dashed, under processed); options.marks: [{index, label}] (deploys).
  function drawChart(box, points, options) {
    options = options || {};
    var series = options.series || ["failed", "processed"];
    var marks = options.marks || [];
    var w = Math.max(240, box.clientWidth || 600), h = box.clientHeight || 220;
    var left = 44, right = 12, top = 12, bottom = 26;
    var max = 1;
    points.forEach(function (d) { series.forEach(function (key) { max = Math.max(max, d[key] || 0); }); });
    max = niceMax(max);
    var svg = el("svg", { viewBox: "0 0 " + w + " " + h, width: w, height: h });
    var plotW = w - left - right, plotH = h - top - bottom;
    var x = function (i) { return left + (points.length > 1 ? i * plotW / (points.length - 1) : plotW / 2); };
    var y = function (v) { return top + plotH - v * plotH / max; };
    for (var t = 0; t <= 4; t++) {
      var value = max * t / 4, yy = y(value);
      el("line", { x1: left, y1: yy, x2: w - right, y2: yy, "class": t ? "aj-grid" : "aj-axis" }, svg);
      el("text", { x: left - 6, y: yy + 4, "text-anchor": "end" }, svg).textContent = short(value);
    }
    el("line", { x1: left, y1: top, x2: left, y2: top + plotH, "class": "aj-axis" }, svg);
    // As many x labels as fit: one every `every` points, the last always.
    var fit = Math.max(2, Math.floor(plotW / 80));
    var every = Math.max(1, Math.ceil(points.length / fit));
    points.forEach(function (d, i) {
      if (i % every && i !== points.length - 1) { return; }
      if (i !== points.length - 1 && points.length - 1 - i < every / 2) { return; }
      el("line", { x1: x(i), y1: top + plotH, x2: x(i), y2: top + plotH + 4, "class": "aj-axis" }, svg);
      var anchor = i === 0 ? "start" : (i === points.length - 1 ? "end" : "middle");
      el("text", { x: x(i), y: h - 8, "text-anchor": anchor }, svg).textContent = d.label;
    });
    marks.forEach(function (m) {
      var mark = el("line", { x1: x(m.index), y1: top, x2: x(m.index), y2: top + plotH, "class": "aj-mark" }, svg);
      el("title", {}, mark).textContent = m.label;
      el("text", { x: x(m.index) + 3, y: top + 10, "class": "aj-mark-label" }, svg).textContent = m.label;
    });
    series.forEach(function (key) {
      var line = points.map(function (d, i) { return x(i).toFixed(1) + "," + y(d[key] || 0).toFixed(1); });
      el("polyline", { points: line.join(" "), "class": "aj-line-" + key }, svg);
      if (points.length <= 60) {
        points.forEach(function (d, i) {
          var dot = el("circle", { cx: x(i), cy: y(d[key] || 0), r: key === "processed" ? 3 : 2.5, "class": "aj-line-" + key }, svg);
          el("title", {}, dot).textContent = d.label + ": " + (d[key] || 0) + " " + key;
        });
      }
    });
    box.replaceChildren(svg);
  }

  function historyPoints(history) {
    return history.map(function (d) { return { label: d.date.slice(5), processed: d.processed, failed: d.failed }; });
  }

  function liveOverview() {
    var select = document.getElementById("aj-refresh");
    var chart = document.getElementById("aj-chart");
    var realtime = document.getElementById("aj-realtime");
    var initial = document.getElementById("aj-history");
    if (!select || !chart) { return; }
    var history = initial ? historyPoints(JSON.parse(initial.textContent)) : [];
    var recent = [], previous = null, timer = null;
    var updated = document.getElementById("aj-updated");
    var banner = document.getElementById("aj-no-process");

    function redraw() {
      drawChart(chart, history);
      if (realtime && recent.length > 1) { drawChart(realtime, recent); }
    }
    redraw();
    window.addEventListener("resize", redraw);

    function refresh() {
      fetch(select.dataset.statsUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.json(); })
        .then(function (data) {
          var stats = data.stats;
          Object.keys(stats).forEach(function (name) {
            document.querySelectorAll('[data-stat="' + name + '"]').forEach(function (node) {
              node.textContent = String(stats[name]);
            });
          });
          Object.keys(data.redis || {}).forEach(function (name) {
            document.querySelectorAll('[data-redis="' + name + '"]').forEach(function (node) {
              node.textContent = String(data.redis[name]);
            });
          });
          if (banner) { banner.hidden = !stats.nobody_works; }
          if (previous) {
            recent.push({
              label: stats.now.slice(11),
              processed: Math.max(0, stats.processed - previous.processed),
              failed: Math.max(0, stats.failed - previous.failed)
            });
            if (recent.length > REALTIME_POINTS) { recent.shift(); }
          }
          previous = stats;
          history = historyPoints(data.history);
          redraw();
          updated.dataset.updates = String(Number(updated.dataset.updates || 0) + 1);
        })
        .catch(function (err) { updated.textContent = "refresh failed (" + err.message + ")"; });
    }

    function schedule() {
      if (timer) { clearInterval(timer); timer = null; }
      var seconds = Number(select.value);
      if (seconds > 0) { refresh(); timer = setInterval(refresh, seconds * 1000); }
    }
    select.addEventListener("change", schedule);
    schedule();
  }

  function forms() {
    document.addEventListener("click", function (event) {
      var bulk = event.target.closest(".aj-bulk");
      if (bulk) {
        var form = bulk.form;
        var all = form.querySelector(".aj-all-matching");
        var everything = all && all.checked;
        if (!everything && !form.querySelector('input[name="ref"]:checked')) {
          event.preventDefault();
          window.alert("Select at least one job, or tick the box to act on all of them.");
          return;
        }
        var question = bulk.dataset.confirm + (everything ? " (" + all.parentNode.textContent.trim() + ")" : "");
        if (!window.confirm(question)) { event.preventDefault(); }
        return;
      }
      var button = event.target.closest("[data-confirm]");
      if (button && !window.confirm(button.dataset.confirm)) { event.preventDefault(); }
      var cut = event.target.closest(".aj-cut");
      if (cut) { cut.classList.toggle("aj-whole"); }
    });
    document.addEventListener("keydown", function (event) {
      var cut = event.target.closest && event.target.closest(".aj-cut");
      if (cut && (event.key === "Enter" || event.key === " ")) { event.preventDefault(); cut.classList.toggle("aj-whole"); }
    });
    document.querySelectorAll(".aj-check-all").forEach(function (box) {
      box.addEventListener("change", function () {
        box.closest("table").querySelectorAll('input[name="ref"]').forEach(function (item) {
          item.checked = box.checked;
        });
      });
    });
  }

  // A page part marked data-live="<seconds>" (Busy, Queues) is fetched again and swapped in
  // place, unless the user is choosing rows or typing there.
  function liveRegions() {
    document.querySelectorAll("[data-live]").forEach(function (region, index) {
      var seconds = Number(region.dataset.live);
      if (!(seconds > 0)) { return; }
      setInterval(function () {
        var busyHere = region.querySelector('input[type="checkbox"]:checked') ||
          region.contains(document.activeElement) && document.activeElement !== document.body;
        if (document.hidden || busyHere) { return; }
        fetch(window.location.href, { credentials: "same-origin" })
          .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.text(); })
          .then(function (html) {
            var fresh = new DOMParser().parseFromString(html, "text/html").querySelectorAll("[data-live]")[index];
            if (!fresh) { return; }
            region.innerHTML = fresh.innerHTML;
            region.dataset.updates = String(Number(region.dataset.updates || 0) + 1);
          })
          .catch(function () { /* the next round tries again */ });
      }, seconds * 1000);
    });
  }

  // Bars: [{label, processed}] (the metrics page's execution-time histogram).
  function drawBars(box, bars) {
    var w = Math.max(240, box.clientWidth || 600), h = box.clientHeight || 220;
    var left = 44, right = 12, top = 12, bottom = 26;
    var max = 1;
    bars.forEach(function (b) { max = Math.max(max, b.processed); });
    max = niceMax(max);
    var svg = el("svg", { viewBox: "0 0 " + w + " " + h, width: w, height: h });
    var plotW = w - left - right, plotH = h - top - bottom, step = plotW / Math.max(1, bars.length);
    for (var t = 0; t <= 4; t++) {
      var yy = top + plotH - plotH * t / 4;
      el("line", { x1: left, y1: yy, x2: w - right, y2: yy, "class": t ? "aj-grid" : "aj-axis" }, svg);
      el("text", { x: left - 6, y: yy + 4, "text-anchor": "end" }, svg).textContent = short(max * t / 4);
    }
    var every = Math.max(1, Math.ceil(bars.length / Math.max(2, Math.floor(plotW / 70))));
    bars.forEach(function (b, i) {
      var barH = plotH * b.processed / max;
      var bar = el("rect", { x: left + i * step + 1, y: top + plotH - barH, width: Math.max(1, step - 2), height: barH, "class": "aj-bar" }, svg);
      el("title", {}, bar).textContent = "≤ " + b.label + ": " + b.processed;
      if (i % every === 0) {
        el("text", { x: left + i * step + step / 2, y: h - 8, "text-anchor": "middle" }, svg).textContent = b.label;
      }
    });
    box.replaceChildren(svg);
  }

  function metricsCharts() {
    var source = document.getElementById("aj-metrics-data");
    if (!source) { return; }
    var data = JSON.parse(source.textContent);
    function redraw() {
      var runs = document.getElementById("aj-metrics-runs");
      var times = document.getElementById("aj-metrics-times");
      var histogram = document.getElementById("aj-metrics-histogram");
      if (runs) { drawChart(runs, data.points, { marks: data.marks }); }
      if (times) { drawChart(times, data.points, { series: ["p50", "p95", "p99"], marks: data.marks }); }
      if (histogram && data.histogram) { drawBars(histogram, data.histogram); }
    }
    redraw();
    window.addEventListener("resize", redraw);
  }

  document.addEventListener("DOMContentLoaded", function () {
    metricsCharts();
    liveOverview();
    liveRegions();
    forms();
  });
})();
