// Warden console: refreshes the page's #live region in place every [console] refresh, paused
// while the tab is hidden, and asks before the actions a form marks with data-confirm. Pages
// work without it: every action is a plain form POST that redirects back.
(function () {
  "use strict";
  var every = Number(document.body.getAttribute("data-refresh-ms") || 0);
  var live = document.getElementById("live");
  var timer = null;
  var busy = false;

  function refresh() {
    if (busy || document.hidden || !live) return;
    busy = true;
    fetch(location.href, { credentials: "same-origin", headers: { "X-Console-Refresh": "1" } })
      .then(function (r) { return r.ok && !r.redirected ? r.text() : null; })
      .then(function (text) {
        if (text === null) return;
        var next = new DOMParser().parseFromString(text, "text/html").getElementById("live");
        // Unchanged content is left alone, so a selection, a hover or a button about to be
        // pressed survives the tick.
        if (!next || next.innerHTML === live.innerHTML) return;
        live.replaceChildren.apply(live, Array.prototype.slice.call(next.childNodes));
        document.body.setAttribute("data-refreshed-at", String(Date.now()));
      })
      .catch(function () { /* the node may be restarting; the next tick tries again */ })
      .then(function () { busy = false; });
  }

  function start() { if (every > 0 && !timer) timer = setInterval(refresh, every); }
  function stop() { if (timer) { clearInterval(timer); timer = null; } }

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) { stop(); } else { refresh(); start(); }
  });
  document.addEventListener("submit", function (e) {
    var ask = e.target.getAttribute("data-confirm");
    if (ask && !window.confirm(ask)) e.preventDefault();
  });
  if (!document.hidden) start();
})();
