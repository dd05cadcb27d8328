// The invitation page's script (no inline script: the CSP forbids it). An invitation link
// carries its token after "#", which a browser never sends, so it reaches no server log; this
// moves it into the form and drops it from the address bar. Without JavaScript the invitee
// pastes it into the same field.
(function () {
  var field = document.getElementById("invite-token");
  var hash = window.location.hash.slice(1);
  if (!field || hash.indexOf("edg_invite_") !== 0) return;
  field.value = hash;
  history.replaceState(null, "", window.location.pathname + window.location.search);
  ["token-label", "token-help"].forEach(function (id) {
    var e = document.getElementById(id);
    if (e) e.hidden = true;
  });
  var found = document.getElementById("token-found");
  if (found) found.hidden = false;
  var go = document.getElementById("enrol-start");
  if (go) go.focus();
})();
