// Upload page: the size is checked before anything is sent; the upload goes by XMLHttpRequest to show
// the bytes sent, then the frames analysed (GET /upload/jobs/<id>), with a Cancel; the answer (the same
// page with the result or the error) replaces the page's main part. Without JavaScript the form posts.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const mb = (n) => `${(n / 1048576).toFixed(1)} MB`;

  function bind() {
    const form = $("upload-form");
    if (!form) return;
    const file = $("upload-file");
    const check = $("upload-check");
    const max = Number(form.dataset.maxBytes);
    const tooBig = () => {
      const f = file.files[0];
      const big = f && f.size > max;
      check.hidden = !big;
      check.textContent = big ? `${f.name} is ${mb(f.size)}; the limit is ${mb(max)}. Choose a smaller file or a shorter clip.` : "";
      return big;
    };
    file.addEventListener("change", tooBig);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      if (tooBig() || !file.files[0]) return;
      send(form);
    });
  }

  function send(form) {
    const job = Array.from(crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, "0")).join("");
    $("upload-job").value = job;
    const bar = $("upload-bar"), busy = $("upload-busy"), cancel = $("upload-cancel");
    const xhr = new XMLHttpRequest();
    let poll = null, cancelled = false, uploaded = false;
    $("upload-progress").hidden = false;
    $("upload-submit").disabled = true;
    cancel.hidden = false;
    const finish = () => { clearInterval(poll); cancel.hidden = true; $("upload-submit").disabled = false; };
    xhr.upload.onprogress = (e) => {
      if (!e.lengthComputable) return;
      bar.max = e.total; bar.value = e.loaded;
      busy.textContent = `Uploading: ${mb(e.loaded)} of ${mb(e.total)} sent`;
    };
    xhr.upload.onload = () => {
      uploaded = true;
      bar.removeAttribute("value");
      busy.textContent = "Uploaded; analysing…";
      poll = setInterval(async () => {
        const r = await fetch(`/upload/jobs/${job}`).then((x) => x.json()).catch(() => null);
        if (!r || r.state !== "analysing" || !r.total) return;
        bar.max = r.total; bar.value = r.done;
        busy.textContent = `Analysing: ${r.done} of ${r.total} frames`;
      }, 300);
    };
    xhr.onload = () => {
      finish();
      if (xhr.status === 413 && !xhr.responseText.includes("<main")) {
        showError("The file is too large for this server.");
        return;
      }
      const doc = new DOMParser().parseFromString(xhr.responseText, "text/html");
      const main = doc.querySelector("main");
      if (!main) { showError(`The upload failed (HTTP ${xhr.status}).`); return; }
      document.querySelector("main").replaceWith(main);
      if (cancelled) showError("Cancelled.");
      bind();
    };
    xhr.onerror = () => { finish(); showError("The upload failed: the connection was lost."); };
    xhr.onabort = () => { finish(); showError("Cancelled."); };
    cancel.onclick = () => {
      cancelled = true;
      if (!uploaded) { xhr.abort(); return; } // still uploading: nothing reaches the server
      const body = new FormData();
      body.append("csrf_token", csrf);
      fetch(`/upload/jobs/${job}/cancel`, { method: "POST", body });
      busy.textContent = "Cancelling…";
    };
    xhr.open("POST", form.action);
    xhr.setRequestHeader("Accept", "text/html");
    xhr.send(new FormData(form));
  }

  function showError(text) {
    const check = $("upload-check");
    $("upload-progress").hidden = true;
    check.hidden = false;
    check.textContent = text;
  }

  bind();
})();
