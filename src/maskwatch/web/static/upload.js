// Upload page: show that work is in progress (videos take a few seconds).
"use strict";
(() => {
  const form = document.getElementById("upload-form");
  if (!form) return;
  form.addEventListener("submit", () => {
    document.getElementById("upload-busy").hidden = false;
    document.getElementById("upload-submit").disabled = true;
  });
})();
