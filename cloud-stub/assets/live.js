// Live updates of the device pages over server-sent events (a file of its own: the CSP
// forbids inline script). Nothing happens on a page without a [data-live-source] block.
//
// - The block's data-live-source is the events URL (/dashboard/events, narrowed to a device
//   on the device page). One EventSource per page.
// - A "device" event updates every [data-live-device="ID"] element: inside it, each
//   [data-live="FIELD"] gets the event's FIELD as text (textContent, never HTML) and each
//   [data-live-title="FIELD"] its title. "state" and "online" also set their pill's class.
// - A "resync" event, the stream opening again after a drop, or a change between the page's
//   rendering and the stream's start (the "hello" event's count against data-live-since)
//   re-fetches the page and swaps in its live blocks (the same page the htmx search fetches),
//   so what changed while the stream was away shows up.
// - <html data-live-status> is "on", "reconnecting" or "off"; data-live-resynced is set
//   after each re-fetch (tests wait on both).
(function () {
  "use strict";
  var first = document.querySelector("[data-live-source]");
  if (!first || !window.EventSource || !window.fetch || !window.DOMParser) return;

  function setClass(el, name) {
    if (el.className !== name) el.className = name;
  }

  function apply(d) {
    var boxes = document.querySelectorAll('[data-live-device="' + CSS.escape(d.id) + '"]');
    var changedState = false;
    boxes.forEach(function (box) {
      box.querySelectorAll("[data-live]").forEach(function (cell) {
        var field = cell.getAttribute("data-live");
        if (field === "state") {
          if (cell.textContent !== d.state) changedState = true;
          cell.textContent = d.state;
          setClass(cell, "pill " + (d.state === "active" ? "ok" : "bad"));
        } else if (field === "online") {
          cell.textContent = d.online ? "● online" : "○ offline";
          setClass(cell, d.online ? "ok" : "muted");
        } else if (typeof d[field] === "string") {
          cell.textContent = d[field];
        }
      });
      box.querySelectorAll("[data-live-title]").forEach(function (cell) {
        var field = cell.getAttribute("data-live-title");
        if (typeof d[field] === "string") cell.title = d[field];
      });
    });
    // A block that shows more than the event carries (the device page: when and why it was
    // revoked) is re-fetched when the state changes.
    if (changedState) {
      for (var i = 0; i < boxes.length; i++) {
        if (boxes[i].hasAttribute("data-live-refetch-on-state")) {
          refetch();
          break;
        }
      }
    }
  }

  // One re-fetch at a time; a request made while one runs is served by one more after it.
  // Events that arrive while the page is being fetched are applied again after the swap:
  // the fetched page may predate them.
  var fetching = false;
  var again = false;
  var late = null;
  function refetch() {
    if (fetching) {
      again = true;
      return;
    }
    fetching = true;
    late = Object.create(null);
    fetch(location.pathname + location.search, { credentials: "same-origin" })
      .then(function (r) {
        return r.text();
      })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var blocks = document.querySelectorAll("[data-live-source][id]");
        for (var i = 0; i < blocks.length; i++) {
          var fresh = doc.getElementById(blocks[i].id);
          if (!fresh) {
            // Signed out, or the page is gone: show what the server says.
            location.reload();
            return;
          }
          var node = document.importNode(fresh, true);
          // Keep the operator's bulk-revoke ticks across the swap (rows still offered).
          var ticked = blocks[i].querySelectorAll("input.bulk-pick:checked");
          for (var k = 0; k < ticked.length; k++) {
            var same = node.querySelector('input.bulk-pick[id="' + ticked[k].id + '"]');
            if (same) same.checked = true;
          }
          blocks[i].replaceWith(node);
          if (window.htmx) window.htmx.process(node);
        }
        document.documentElement.setAttribute("data-live-resynced", String(Date.now()));
        var pending = late;
        late = null;
        Object.keys(pending).forEach(function (id) {
          apply(pending[id]);
        });
      })
      .catch(function () {})
      .then(function () {
        late = null;
        fetching = false;
        if (again) {
          again = false;
          refetch();
        }
      });
  }

  var source = new EventSource(first.getAttribute("data-live-source"));
  var dropped = false;
  source.addEventListener("device", function (ev) {
    var d;
    try {
      d = JSON.parse(ev.data);
    } catch (e) {
      return; // A malformed event changes nothing.
    }
    if (late) late[d.id] = d;
    apply(d);
  });
  source.addEventListener("resync", refetch);
  // The first event says how many changes the cloud has counted; the page was rendered at
  // data-live-since. Anything in between (before the stream was open): re-fetch.
  source.addEventListener("hello", function (ev) {
    if (fetching) return; // A re-fetch started after the stream opened covers it.
    try {
      var since = document.querySelector("[data-live-source]").getAttribute("data-live-since");
      if (String(JSON.parse(ev.data).changes) !== since) refetch();
    } catch (e) {
      refetch();
    }
  });
  source.addEventListener("open", function () {
    document.documentElement.setAttribute("data-live-status", "on");
    if (dropped) {
      dropped = false;
      refetch();
    }
  });
  source.addEventListener("error", function () {
    // The browser reconnects by itself, unless the server refused (signed out, too many
    // streams): then the page stays as loaded.
    dropped = true;
    document.documentElement.setAttribute(
      "data-live-status",
      source.readyState === EventSource.CLOSED ? "off" : "reconnecting"
    );
  });
})();
