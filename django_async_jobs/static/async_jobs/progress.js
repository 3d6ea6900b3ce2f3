/* The job progress admin pages: reload every few seconds while a row is pending or processing,
   unless the user has ticked a row, opened the error details or is typing. */
(function () {
  "use strict";
  var SECONDS = 5;
  function busy() {
    var text = (document.getElementById("result_list") || document.getElementById("content-main") || document.body).textContent;
    return /\b(Processing|Pending)\b/.test(text);
  }
  function interacting() {
    return document.querySelector("input.action-select:checked, details[open]") !== null ||
      (document.activeElement && /^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName));
  }
  document.addEventListener("DOMContentLoaded", function () {
    if (!busy()) { return; }
    setInterval(function () {
      if (!interacting() && document.visibilityState === "visible") { window.location.reload(); }
    }, SECONDS * 1000);
  });
})();
