// 协查 / 通报 pages: progressive enhancement only (the server refuses a second reply by itself).
// - A form marked data-once disables its submit button once it is sent (no double click).
// - A button marked data-print opens the browser's print dialog.
"use strict";
document.addEventListener("submit", function (event) {
  var form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-once")) return;
  if (form.dataset.sent === "1") { event.preventDefault(); return; }
  form.dataset.sent = "1";
  // After this tick, so that the button's own name and value are still part of the submission.
  window.setTimeout(function () {
    form.querySelectorAll("button[type=submit], input[type=submit]").forEach(function (button) {
      button.disabled = true;
      button.setAttribute("aria-disabled", "true");
      if (button.tagName === "BUTTON") button.textContent = "正在提交…";
    });
  }, 0);
});
document.addEventListener("click", function (event) {
  var target = event.target;
  if (target instanceof Element && target.closest("[data-print]")) window.print();
});
