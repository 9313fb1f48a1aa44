// Live page: the user's webcam over a WebSocket (one frame in flight at a time) and the server cameras'
// counters. Plain JavaScript, no build step; loaded as a static file (the CSP forbids inline scripts).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const genderOn = document.body.dataset.gender === "1";
  // label colours and words: the CSS variables of app.css (the same as the server's drawings, draw.py)
  const css = getComputedStyle(document.documentElement);
  const COLORS = Object.fromEntries(Object.entries(
    { mask: "--ok", no_mask: "--bad", incorrect: "--incorrect", uncertain: "--unsure" },
  ).map(([label, name]) => [label, css.getPropertyValue(name).trim()]));
  const MASK_TEXT = { mask: "mask", no_mask: "no mask", incorrect: "incorrect mask", uncertain: "uncertain" };
  const TIME_ZONE = document.body.dataset.timezone || undefined; // the site's (server.timezone)
  const clock = (d) => d.toLocaleTimeString([], { timeZone: TIME_ZONE, timeZoneName: "short" });
  const MAX_SIDE = 640; // frames are sent at most 640 px wide (640x480 for a VGA webcam)

  // ---------------------------------------------------------------- webcam
  const video = $("webcam-video");
  const overlay = $("webcam-overlay");
  const startBtn = $("webcam-start");
  const stopBtn = $("webcam-stop");
  const statusEl = $("webcam-status");
  const resultEl = $("webcam-result");
  const grab = document.createElement("canvas");
  const gctx = grab.getContext("2d");
  let ws = null;
  let stream = null;
  let running = false;
  let sentAt = 0;
  let lastResult = null;
  const rtts = [];
  const doneTimes = [];

  function setStatus(text) { if (statusEl) statusEl.textContent = text; }

  function setCounter(root, key, value) {
    const el = root && root.querySelector(`[data-counter="${key}"]`);
    if (el) el.textContent = value;
  }

  function median(xs) {
    if (!xs.length) return 0;
    const s = [...xs].sort((a, b) => a - b);
    return s[Math.floor(s.length / 2)];
  }

  async function start() {
    if (running) return;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      setStatus("This browser cannot share a webcam here (it needs https or localhost).");
      return;
    }
    startBtn.disabled = true;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
    } catch (err) {
      setStatus(`Webcam not available: ${err.name || err}`);
      startBtn.disabled = false;
      return;
    }
    video.srcObject = stream;
    await video.play().catch(() => {});
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(`${proto}//${location.host}/ws/webcam`);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => { running = true; stopBtn.disabled = false; setStatus("running"); sendFrame(); };
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      handle(msg);
      if (running && !msg.fatal) sendFrame();
    };
    ws.onclose = (ev) => {
      const was = running;
      stop();
      if (ev.code === 1008) setStatus(`refused: ${ev.reason || "log in again"}`);
      else if (was && ev.code !== 1000) setStatus(`connection closed (${ev.code})`);
    };
  }

  function stop() {
    running = false;
    if (ws && ws.readyState <= 1) ws.close(1000);
    ws = null;
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = null;
    startBtn.disabled = false;
    stopBtn.disabled = true;
    setStatus("stopped");
    clearView();
  }

  function clearView() { // no boxes over a stopped video, counters back to zero
    lastResult = null;
    rtts.length = 0;
    doneTimes.length = 0;
    overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
    for (const el of document.querySelectorAll("#webcam-counters [data-counter]")) {
      el.textContent = ["fps", "latency"].includes(el.dataset.counter) ? "–" : "0";
    }
    $("webcam-faces").querySelector("tbody").replaceChildren();
    resultEl.dataset.count = "0";
    resultEl.dataset.labels = "";
  }

  function sendFrame() {
    if (!running || !ws || ws.readyState !== WebSocket.OPEN) return;
    const w = video.videoWidth, h = video.videoHeight;
    if (!w || !h) { setTimeout(sendFrame, 30); return; }
    const scale = Math.min(1, MAX_SIDE / Math.max(w, h));
    grab.width = Math.round(w * scale);
    grab.height = Math.round(h * scale);
    gctx.drawImage(video, 0, 0, grab.width, grab.height);
    grab.toBlob((blob) => {
      if (!blob || !running) return;
      blob.arrayBuffer().then((buf) => {
        if (!running || !ws || ws.readyState !== WebSocket.OPEN) return;
        sentAt = performance.now();
        ws.send(buf);
      });
    }, "image/jpeg", 0.8);
  }

  function handle(msg) {
    const now = performance.now();
    if (msg.type === "error") {
      setStatus(msg.message);
      if (msg.fatal) stop();
      return;
    }
    if (msg.type !== "result") return;
    rtts.push(now - sentAt);
    if (rtts.length > 30) rtts.shift();
    doneTimes.push(now);
    while (doneTimes.length && now - doneTimes[0] > 2000) doneTimes.shift();
    lastResult = msg.result;
    const counters = $("webcam-counters");
    for (const [k, v] of Object.entries(msg.counts || {})) setCounter(counters, k, v);
    const span = doneTimes.length > 1 ? (doneTimes[doneTimes.length - 1] - doneTimes[0]) / 1000 : 0;
    setCounter(counters, "fps", span > 0 ? ((doneTimes.length - 1) / span).toFixed(1) : "–");
    setCounter(counters, "latency", `${Math.round(median(rtts))} ms`);
    draw(msg.result);
    showFaces(msg.result, now - sentAt, msg.server_ms);
    for (const e of msg.events || []) addEvent(e);
  }

  function draw(result) {
    const cw = overlay.clientWidth, ch = overlay.clientHeight;
    if (overlay.width !== cw || overlay.height !== ch) { overlay.width = cw; overlay.height = ch; }
    const ctx = overlay.getContext("2d");
    ctx.clearRect(0, 0, cw, ch);
    const [fw, fh] = result.frame_size || [grab.width, grab.height];
    // the video is drawn with object-fit: contain; map frame pixels onto the same box
    const s = Math.min(cw / fw, ch / fh);
    const ox = (cw - fw * s) / 2, oy = (ch - fh * s) / 2;
    ctx.font = "bold 14px system-ui, sans-serif";
    ctx.textBaseline = "bottom";
    for (const f of result.faces) {
      const [x1, y1, x2, y2] = f.box;
      const color = COLORS[f.mask.label] || "#fff";
      const x = ox + x1 * s, y = oy + y1 * s, w = (x2 - x1) * s, h = (y2 - y1) * s;
      ctx.lineWidth = 3;
      ctx.strokeStyle = color;
      ctx.strokeRect(x, y, w, h);
      const label = faceLabel(f);
      const tw = ctx.measureText(label).width + 8;
      const ty = y > 20 ? y : y + h + 20;
      const lx = Math.max(0, Math.min(x - 1.5, cw - tw)); // keep the label inside the canvas
      ctx.fillStyle = color;
      ctx.fillRect(lx, ty - 19, tw, 19);
      ctx.fillStyle = "#fff";
      ctx.fillText(label, lx + 4.5, ty - 3);
    }
  }

  function faceLabel(f) {
    let s = f.track_id != null ? `#${f.track_id} ` : "";
    s += `${MASK_TEXT[f.mask.label] || f.mask.label} ${Math.round(f.mask.confidence * 100)}%`;
    if (genderOn && f.gender) s += ` · ${f.gender.label} ${Math.round(f.gender.confidence * 100)}%`;
    return s;
  }

  function showFaces(result, rtt, serverMs) {
    const labels = result.faces.map((f) => f.mask.label);
    resultEl.dataset.labels = labels.join(",");
    resultEl.dataset.count = String(result.faces.length);
    resultEl.dataset.frame = String(result.frame_index);
    resultEl.dataset.rttMs = rtt.toFixed(1);
    resultEl.dataset.serverMs = String(serverMs);
    resultEl.textContent = JSON.stringify(result);
    const tbody = $("webcam-faces").querySelector("tbody");
    tbody.replaceChildren(...result.faces.map((f) => {
      const tr = document.createElement("tr");
      tr.dataset.mask = f.mask.label;
      const cells = [f.track_id ?? "–", f.mask.label, f.mask.confidence.toFixed(2)];
      if (genderOn && f.gender) cells.push(f.gender.label, f.gender.confidence.toFixed(2));
      cells.push(f.box.map((v) => Math.round(v)).join(", "));
      cells.forEach((c, i) => {
        const td = document.createElement("td");
        td.textContent = c;
        if (i === 1) td.className = `label-${f.mask.label}`;
        tr.appendChild(td);
      });
      return tr;
    }));
  }

  function addEvent(e) {
    const list = $("webcam-events");
    const hint = list.querySelector(".hint");
    if (hint) hint.remove();
    const li = document.createElement("li");
    li.className = "webcam-event";
    const what = e.mask_label === "incorrect" ? "mask worn incorrectly" : "no mask";
    const text = `${clock(new Date())}: ${what} (track #${e.track_id ?? "?"}, ${Math.round(e.mask_confidence * 100)}%)`;
    const a = document.createElement("a");
    // the event is stored a moment after it is reported, so its id may not be known yet
    a.href = e.id != null ? `/events/${e.id}` : `/events?camera=${encodeURIComponent(e.camera)}`;
    a.textContent = text;
    li.appendChild(a);
    list.prepend(li);
  }

  if (startBtn) {
    startBtn.addEventListener("click", start);
    stopBtn.addEventListener("click", stop);
    window.addEventListener("resize", () => { if (lastResult) draw(lastResult); });
  }

  // ---------------------------------------------------------------- server cameras
  // Every tile over ONE WebSocket (/ws/live; protocol in maskwatch/web/routes/live.py): the page says
  // which tiles are visible, the server sends each one's newest frame (binary: 4-byte big-endian header
  // length, JSON header, JPEG) and every camera's state about once a second (text).
  const tiles = new Map(); // name -> {fig, img, url, seq, received}
  for (const fig of document.querySelectorAll("figure.cam[data-camera]")) {
    tiles.set(fig.dataset.camera, { fig, img: fig.querySelector("img.cam-stream"), url: null, seq: null, received: 0 });
  }
  const camStatus = $("cameras-status");
  const visible = new Set();
  const decoder = new TextDecoder();
  let live = null;
  let backoff = 500;
  let subscribed = null;

  function showState(tile, cam) {
    const set = (k, v) => { const el = tile.fig.querySelector(`[data-field="${k}"]`); if (el) el.textContent = v; };
    tile.fig.dataset.state = cam.state;
    set("state", cam.state);
    set("fps", cam.fps);
    set("latency", cam.latency_ms ? cam.latency_ms.p95 : "–");
    set("dropped", cam.dropped ?? 0);
    set("age", cam.last_frame_age_s ?? "–");
    set("error", cam.error || "");
    for (const [k, v] of Object.entries(cam.counts || {})) set(k, v);
    const c = cam.counts || {};
    const judged = (c.masked || 0) + (c.unmasked || 0) + (c.incorrect || 0);
    set("compliance", judged ? `${Math.round((100 * c.masked) / judged)}%` : "–");
  }

  function showCompliance(hour) {
    for (const [name, tile] of tiles) {
      const el = tile.fig.querySelector('[data-field="compliance_1h"]');
      const v = hour[name];
      if (el) el.textContent = v == null ? "–" : `${Math.round(100 * v)}%`;
    }
  }

  // an alert raised by a server camera while this page is open: a banner, and a beep when chosen
  const banner = $("alert-banner");
  const sound = $("alert-sound");
  let audio = null;
  if (sound) {
    sound.checked = localStorage.getItem("maskwatch-alert-sound") === "1";
    sound.addEventListener("change", () => {
      localStorage.setItem("maskwatch-alert-sound", sound.checked ? "1" : "0");
      if (sound.checked && !audio) audio = new AudioContext(); // created by a click: allowed to play
    });
    $("alert-dismiss").addEventListener("click", () => { banner.hidden = true; });
  }

  function beep() {
    if (!sound.checked) return;
    audio = audio || new AudioContext();
    const osc = audio.createOscillator(), gain = audio.createGain();
    osc.frequency.value = 880;
    gain.gain.value = 0.2;
    osc.connect(gain).connect(audio.destination);
    osc.start();
    osc.stop(audio.currentTime + 0.3);
  }

  function showAlert(e) {
    const what = e.mask_label === "incorrect" ? "mask worn incorrectly" : "no mask";
    $("alert-text").textContent = `${clock(new Date(e.time))} · ${e.camera}: ${what} (track #${e.track_id ?? "?"}, ${Math.round(e.mask_confidence * 100)}%)`;
    $("alert-link").href = `/events/${e.id}`;
    banner.dataset.eventId = String(e.id);
    banner.hidden = false;
    beep();
  }

  function showFrame(buf) {
    const n = new DataView(buf).getUint32(0);
    const head = JSON.parse(decoder.decode(new Uint8Array(buf, 4, n)));
    const tile = tiles.get(head.camera);
    if (!tile || !tile.img) return;
    showState(tile, head);
    if (head.seq === tile.seq) return;
    const url = URL.createObjectURL(new Blob([new Uint8Array(buf, 4 + n)], { type: "image/jpeg" }));
    const old = tile.url;
    tile.url = url;
    tile.img.src = url;
    if (old) URL.revokeObjectURL(old); // the shown image stays decoded; the blob is freed
    tile.seq = head.seq;
    tile.received += 1;
    tile.fig.dataset.seq = String(head.seq);
    tile.fig.dataset.received = String(tile.received);
  }

  function subscribe() {
    if (!live || live.readyState !== WebSocket.OPEN) return;
    const names = document.hidden ? [] : [...tiles.keys()].filter((name) => visible.has(name) && tiles.get(name).img);
    const text = JSON.stringify({ cameras: names });
    if (text !== subscribed) { live.send(text); subscribed = text; }
  }

  function connectLive() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    live = new WebSocket(`${proto}//${location.host}/ws/live`);
    live.binaryType = "arraybuffer";
    live.onopen = () => { backoff = 500; subscribed = null; if (camStatus) camStatus.textContent = ""; subscribe(); };
    live.onmessage = (ev) => {
      if (typeof ev.data !== "string") { showFrame(ev.data); return; }
      let msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      if (msg.type === "alert") { showAlert(msg.event); return; }
      if (msg.type !== "cameras") return;
      showCompliance(msg.compliance_1h || {});
      for (const cam of msg.cameras) { const tile = tiles.get(cam.name); if (tile) showState(tile, cam); }
    };
    live.onclose = (ev) => {
      live = null;
      if (camStatus) {
        camStatus.textContent = ev.code === 1008 ? `refused: ${ev.reason || "log in again"}` : "connection lost, reconnecting…";
      }
      setTimeout(connectLive, backoff); // the server may be restarting
      backoff = Math.min(backoff * 2, 10000);
    };
  }

  if (tiles.size) {
    const watch = new IntersectionObserver((entries) => {
      for (const e of entries) {
        if (e.isIntersecting) visible.add(e.target.dataset.camera); else visible.delete(e.target.dataset.camera);
      }
      subscribe();
    }, { rootMargin: "100% 0px" }); // the tiles on screen and within one more screen of it
    for (const tile of tiles.values()) watch.observe(tile.fig);
    document.addEventListener("visibilitychange", subscribe);
    connectLive();
  }
})();
