// The dashboard's only script of its own (no inline script: the CSP forbids it).
// A button with data-copy="ELEMENT-ID" copies that element's text to the clipboard.
document.addEventListener("click", function (ev) {
  var button = ev.target.closest("[data-copy]");
  if (!button) return;
  var source = document.getElementById(button.getAttribute("data-copy"));
  if (!source || !navigator.clipboard) return;
  navigator.clipboard.writeText(source.textContent.trim()).then(function () {
    button.textContent = "Copied";
  });
});
