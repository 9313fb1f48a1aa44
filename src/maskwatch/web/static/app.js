// Every page: table cells get their column's name (data-label: shown on narrow screens, where tables
// become cards, app.css) and forms with data-confirm ask first. Plain JavaScript (the CSP forbids inline).
"use strict";
(() => {
  function labelCells(table) {
    const names = [...table.querySelectorAll("thead th")].map((th) => th.textContent.trim());
    for (const tr of table.querySelectorAll("tbody tr")) {
      [...tr.children].forEach((td, i) => { if (names[i] && !td.hasAttribute("colspan")) td.dataset.label = names[i]; });
    }
  }
  for (const table of document.querySelectorAll("table.grid")) {
    labelCells(table);
    const body = table.querySelector("tbody");
    if (body) new MutationObserver(() => labelCells(table)).observe(body, { childList: true });
  }
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (ev) => { if (!window.confirm(form.dataset.confirm)) ev.preventDefault(); });
  }
  // snapshot viewer: click a snapshot to see it full screen, click again to zoom in (2x), Esc closes
  for (const img of document.querySelectorAll("img.zoomable")) {
    img.addEventListener("click", () => {
      const dialog = document.createElement("dialog");
      dialog.className = "viewer";
      const big = document.createElement("img");
      big.src = img.src;
      big.alt = img.alt;
      const close = document.createElement("button");
      close.type = "button";
      close.textContent = "Close";
      close.addEventListener("click", () => dialog.close());
      big.addEventListener("click", () => dialog.classList.toggle("zoomed"));
      dialog.addEventListener("close", () => dialog.remove());
      dialog.append(big, close);
      document.body.appendChild(dialog);
      dialog.showModal();
    });
  }
})();
