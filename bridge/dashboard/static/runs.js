// perkbridge dashboard, run page: follows a running run through progress.json (dashboard.js polls
// every 2 s); the page shows the same state without this file, as of its last load.
(function () {
  "use strict";
  function fmt(n) { return n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"); }
  function fmt1(n) {
    return n === null || n === undefined ? "—"
      : Number(n).toLocaleString("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 1 });
  }
  function duration(ms) {
    var s = ms / 1000;
    if (ms < 1000) { return ms + " ms"; }
    if (s < 60) { return s.toFixed(1) + " s"; }
    var m = Math.floor(s / 60), sec = Math.floor(s % 60);
    if (m < 60) { return m + " min " + (sec < 10 ? "0" : "") + sec + " s"; }
    var h = Math.floor(m / 60); m = m % 60;
    return h + " h " + (m < 10 ? "0" : "") + m + " min";
  }
  function set(root, selector, text) {
    var el = root.querySelector(selector);
    if (el) { el.textContent = text; }
  }
  window.perkbridge.poll("run-progress", function (node, body) {
    var shown = Array.prototype.map.call(node.querySelectorAll("[data-phase]"),
      function (row) { return row.getAttribute("data-phase"); });
    var names = body.phases.map(function (p) { return p.name; });
    if (!body.running || names.join("\n") !== shown.join("\n")) {
      // Ended, or a new phase began: the server renders the page as it is now.
      node.setAttribute("data-poll-done", "1");
      window.location.reload();
      return;
    }
    Object.keys(body.counts).forEach(function (name) {
      set(node, '[data-count="' + name + '"]', fmt(body.counts[name]));
    });
    set(node, '[data-live="elapsed"]', duration(body.elapsed_ms));
    set(node, '[data-live="rate"]', fmt1(body.rate));
    body.phases.forEach(function (p) {
      var row = node.querySelector('[data-phase="' + CSS.escape(p.name) + '"]');
      if (!row) { return; }
      set(row, '[data-field="done"]', fmt(p.done));
      set(row, '[data-field="total"]', fmt(p.total));
      set(row, '[data-field="rate"]', fmt1(p.rate));
      set(row, '[data-field="state"]', p.finished ? "done" + (p.summary ? " · " + p.summary : "") : "running");
      var bar = row.querySelector("progress");
      if (bar && p.share !== null) { bar.max = 1000; bar.value = Math.round(p.share * 1000); }
    });
  });
})();
