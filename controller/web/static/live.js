// Keeps a dashboard page current without a reload: asks /api/stamp every few seconds whether a run started or
// ended (or an app was suspended), and if so fetches this page again and swaps its <main>. Without JavaScript
// the pages still work; while a run is going they reload themselves (a <noscript> refresh).
(function () {
  "use strict";
  var body = document.body;
  var stamp = body.dataset.stamp;
  if (!stamp) { return; }  // the login and error pages have nothing to follow
  var every = (parseFloat(body.dataset.poll) || 2) * 1000;
  function refresh() {
    fetch(location.href, {credentials: "same-origin", headers: {"Accept": "text/html"}})
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var page = new DOMParser().parseFromString(html, "text/html");
        var main = page.getElementById("main");
        if (main) {
          document.getElementById("main").replaceWith(main);
          stamp = page.body.dataset.stamp;
          body.dataset.stamp = stamp;
        }
      });
  }
  function poll() {
    fetch("/api/stamp?page=" + encodeURIComponent(location.pathname), {credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (answer) {
        if (answer && answer.stamp !== stamp) { refresh(); }
      })
      .catch(function () {})
      .then(function () { setTimeout(poll, every); });
  }
  setTimeout(poll, every);
})();
