// Hartslag dashboard: keeps the #live region current without a full reload.
// A server-sent `change` event (a monitor changed state) refreshes at once; a slow
// periodic refresh keeps event counts and relative times current. Pages work without it.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var status = document.getElementById("live-status");
  if (!live) return;
  var busy = false, again = false, deferred = false, timer = null, es = null;

  function setStatus(text) { if (status) status.textContent = text; }

  // While someone types or picks in a form inside the region, replacing it would wipe
  // their input: the refresh waits until focus leaves the field (and is not dropped).
  function editing() {
    var a = document.activeElement;
    return a && live.contains(a) && /^(INPUT|SELECT|TEXTAREA)$/.test(a.tagName);
  }

  // Focus on a link or button survives the refresh: it is found again by its target.
  function focusKey() {
    var a = document.activeElement;
    if (!a || !live.contains(a)) return null;
    return a.getAttribute("href") || a.id || null;
  }

  function restoreFocus(key) {
    if (!key) return;
    var el = document.getElementById(key) ||
      live.querySelector('[href="' + key.replace(/"/g, '\\"') + '"]');
    if (el) el.focus();
  }

  function refresh() {
    if (document.hidden) { deferred = true; return; }
    if (editing()) { deferred = true; return; }
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.href, { credentials: "same-origin", cache: "no-store", headers: { "X-Hartslag-Live": "1" } })
      .then(function (r) {
        if (r.redirected && new URL(r.url).pathname.indexOf("/ui/login") === 0) { location.reload(); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (!html || editing()) { if (html) deferred = true; return; }
        var next = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        if (!next) return;
        var key = focusKey();
        live.replaceChildren.apply(live, Array.prototype.slice.call(next.childNodes));
        restoreFocus(key);
        document.body.setAttribute("data-refreshed", String(Date.now()));
        setStatus("Live updates on");
      })
      .catch(function () { setStatus("Live updates paused (server unreachable)"); })
      .then(function () { busy = false; if (again) { again = false; refresh(); } });
  }

  function soon() { clearTimeout(timer); timer = setTimeout(refresh, 150); }

  live.addEventListener("focusout", function () {
    if (deferred) { deferred = false; setTimeout(function () { if (!editing()) soon(); else deferred = true; }, 0); }
  });

  // One stream per visible tab: hidden tabs close theirs (browsers allow few connections
  // per host) and catch up when shown again.
  function connect() {
    if (es || !window.EventSource) return;
    es = new EventSource("/ui/live");
    es.addEventListener("change", soon);
    es.onopen = function () { setStatus("Live updates on"); };
    es.onerror = function () { setStatus("Live updates reconnecting…"); };
  }
  function disconnect() { if (es) { es.close(); es = null; } }
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) { disconnect(); } else { connect(); if (deferred) { deferred = false; soon(); } }
  });
  if (!document.hidden) connect();
  setInterval(refresh, 10000);
})();
