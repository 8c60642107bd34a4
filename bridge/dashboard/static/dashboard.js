// perkbridge dashboard: small progressive enhancements; every page works without this file.
(function () {
  "use strict";
  // Live regions: an element with data-poll="URL" is refreshed from that JSON every few seconds
  // by the page module that owns it (window.perkbridge.poll registers a handler).
  var handlers = {};
  window.perkbridge = {
    poll: function (name, fn) { handlers[name] = fn; }
  };
  function tick() {
    var nodes = document.querySelectorAll("[data-poll]");
    nodes.forEach(function (node) {
      var fn = handlers[node.getAttribute("data-poll-handler") || ""];
      if (!fn || node.getAttribute("data-poll-done") === "1") { return; }
      fetch(node.getAttribute("data-poll"), { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (body) { if (body) { fn(node, body); } })
        .catch(function () { /* the next tick tries again */ });
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    // Confirmation for buttons that say so (the server shows its own confirm page as well).
    document.querySelectorAll("[data-confirm]").forEach(function (el) {
      el.addEventListener("click", function (ev) {
        if (!window.confirm(el.getAttribute("data-confirm"))) { ev.preventDefault(); }
      });
    });
    // "Select all" checkboxes: <input type=checkbox data-select-all="NAME"> toggles inputs named NAME.
    document.querySelectorAll("[data-select-all]").forEach(function (box) {
      box.addEventListener("change", function () {
        document.querySelectorAll('input[type="checkbox"][name="' + box.getAttribute("data-select-all") + '"]')
          .forEach(function (other) { other.checked = box.checked; });
      });
    });
    if (document.querySelector("[data-poll]")) { setInterval(tick, 2000); }
  });
})();
