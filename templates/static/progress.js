// Live progress of starting servers: every element with data-progress-url reads the hub's
// progress event stream (JupyterHub's /hub/api/users/<name>/server/progress) and fills its
// <progress> bar and message. When the server is ready the page goes to data-ready-url (the
// progress page) or reloads (the home page). Without JavaScript, a refresh shows the state.
"use strict";
(function () {
  function follow(el) {
    var bar = el.querySelector("progress");
    var text = el.querySelector(".progress-message");
    var source = new EventSource(el.getAttribute("data-progress-url"));
    source.onmessage = function (msg) {
      var event;
      try { event = JSON.parse(msg.data); } catch (e) { return; }
      if (typeof event.progress === "number" && bar) { bar.value = event.progress; }
      if (event.message && text) { text.textContent = event.message; }
      if (event.ready) {
        source.close();
        if (el.getAttribute("data-reload") === "true") {
          window.location.assign(el.getAttribute("data-ready-url") || event.url);
        } else {
          window.location.reload();
        }
      } else if (event.failed) {
        source.close();
        el.classList.add("failed");
        window.setTimeout(function () { window.location.reload(); }, 1500);
      }
    };
    source.onerror = function () {
      // The stream ends when the spawn does: show the state the hub now reports.
      source.close();
      window.setTimeout(function () { window.location.reload(); }, 2000);
    };
  }
  document.querySelectorAll("[data-progress-url]").forEach(follow);
})();
