// Hartslag dashboard: keeps the #live region current without a full reload.
// A server-sent `change` event (a monitor changed state) refreshes at once; a slow
// periodic refresh keeps event counts and relative times current. Pages work without it.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var status = document.getElementById("live-status");
  var busy = false, again = false, timer = null;

  function setStatus(text) { if (status) status.textContent = text; }

  function refresh() {
    if (!live) return;
    var a = document.activeElement;
    if (a && live.contains(a) && /^(INPUT|SELECT|TEXTAREA)$/.test(a.tagName)) return; // do not wipe typing
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.href, { credentials: "same-origin", cache: "no-store", headers: { "X-Hartslag-Live": "1" } })
      .then(function (r) {
        if (r.redirected && new URL(r.url).pathname.indexOf("/ui/login") === 0) { location.reload(); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (!html) return;
        var next = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        if (!next) return;
        var focused = document.activeElement && document.activeElement.id;
        live.replaceChildren.apply(live, Array.prototype.slice.call(next.childNodes));
        if (focused) { var el = document.getElementById(focused); if (el) el.focus(); }
        document.body.setAttribute("data-refreshed", String(Date.now()));
        wire();
      })
      .catch(function () { setStatus("Live updates paused (server unreachable)"); })
      .then(function () { busy = false; if (again) { again = false; refresh(); } });
  }

  function soon() { clearTimeout(timer); timer = setTimeout(refresh, 150); }

  function wire() {
    // Filters apply as soon as a choice is made; the submit button stays for keyboards.
    var selects = document.querySelectorAll("form[data-autosubmit] select");
    for (var i = 0; i < selects.length; i++) {
      selects[i].addEventListener("change", function (e) { e.target.form.submit(); });
    }
  }

  wire();
  if (live && window.EventSource) {
    var es = new EventSource("/ui/live");
    es.addEventListener("change", soon);
    es.onopen = function () { setStatus("Live updates on"); };
    es.onerror = function () { setStatus("Live updates reconnecting…"); };
  }
  if (live) setInterval(refresh, 10000);
})();
