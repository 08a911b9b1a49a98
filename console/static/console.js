// icm console: the few things a page needs script for. No inline script anywhere (the CSP
// allows scripts from /static only); server-rendered HTML works without it.
"use strict";

function csrfToken() {
  const m = document.querySelector('meta[name="csrf-token"]');
  return m ? m.content : "";
}

function paintSwatches(root) {
  for (const el of root.querySelectorAll("[data-color]")) {
    el.style.backgroundColor = el.dataset.color;
  }
}

function classColor(name) {  // the same hue as console/app.py's class_color
  let h = 0;
  for (const ch of name) h = (h * 131 + ch.codePointAt(0)) % 360;
  return `hsl(${h}, 85%, 55%)`;
}

// -- frame page: detections toggle, human view with progress, compare slider ---------------------
function setupFrame() {
  const viewer = document.getElementById("viewer");
  if (!viewer) return;
  const toggle = document.getElementById("toggle-boxes");
  toggle.addEventListener("change", () => {
    viewer.classList.toggle("no-overlay", !toggle.checked);
  });
  const button = document.getElementById("human-button");
  const status = document.getElementById("human-status");
  const humanView = document.getElementById("human-view");
  const placeholder = document.getElementById("human-placeholder");
  const caption = document.getElementById("human-caption");
  const slider = document.getElementById("compare-slider");
  const clip = document.getElementById("machine-clip");
  const url = viewer.dataset.humanUrl;
  const camera = viewer.dataset.camera;
  let timer = null;

  slider.addEventListener("input", () => {
    // 0: all machine image, 100: all human image; the machine image covers the left part
    clip.style.width = `${100 - Number(slider.value)}%`;
  });

  function show(job) {
    const img = document.getElementById("human-img");
    img.src = job.image;
    img.addEventListener("load", () => {
      placeholder.hidden = true;
      humanView.hidden = false;
      slider.value = "100";
      clip.style.width = "0%";
    }, {once: true});
    caption.textContent = `Human image (base + enhancement): ${job.total_bpp.toFixed(4)} bpp ` +
      `= base ${job.base_bpp.toFixed(4)} + enhancement ${job.enhancement_bpp.toFixed(4)} bpp ` +
      `(${job.enhancement_bytes} bytes${job.cached ? ", cached" : ""})`;
    status.className = "status ok";
    status.textContent = `Human view ready${job.cached ? " (from the cloud's cache)" : ""} ` +
      `after ${job.elapsed_s.toFixed(1)} s.`;
    button.disabled = false;
    button.textContent = "Reload human view";
  }

  function fail(message) {
    status.className = "status problem";
    status.setAttribute("role", "alert");
    status.textContent = message;
    button.disabled = false;
    button.textContent = "Try again";
  }

  function progress(job) {
    status.className = "status pending";
    status.innerHTML = "";
    const bar = document.createElement("progress");
    status.append(bar, ` Asking camera ${camera}'s edge for the enhancement layer and ` +
      `decoding it… ${job.elapsed_s.toFixed(1)} s`);
  }

  async function handle(resp) {
    let job;
    try { job = await resp.json(); } catch (e) { fail(`Unexpected answer (${resp.status}).`); return; }
    if (job.state === "done") { show(job); return; }
    if (job.state === "pending") {
      progress(job);
      timer = setTimeout(poll, 400);
      return;
    }
    fail((job.error && job.error.message) || `Request failed (${resp.status}).`);
  }

  async function poll() {
    try {
      await handle(await fetch(url, {headers: {"Accept": "application/json"}}));
    } catch (e) { fail("The console is unreachable."); }
  }

  button.addEventListener("click", async () => {
    clearTimeout(timer);
    button.disabled = true;
    status.removeAttribute("role");
    status.className = "status pending";
    status.textContent = "Requesting the human view…";
    try {
      await handle(await fetch(url, {method: "POST", headers: {"X-CSRF-Token": csrfToken(),
                                                                  "Accept": "application/json"}}));
    } catch (e) { fail("The console is unreachable."); }
  });
  if (viewer.dataset.humanCached === "yes") button.click();
}

// -- live page: server-sent events from the cloud's WatchDetections -------------------------------
function svgOverlay(f) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "overlay");
  svg.setAttribute("viewBox", `0 0 ${f.width} ${f.height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  for (const d of f.detections) {
    const c = classColor(d.class_name);
    for (const poly of d.mask) {
      const p = document.createElementNS(ns, "polygon");
      const pts = [];
      for (let i = 0; i + 1 < poly.length; i += 2) pts.push(`${poly[i]},${poly[i + 1]}`);
      p.setAttribute("points", pts.join(" "));
      p.setAttribute("fill", c);
      p.setAttribute("fill-opacity", "0.28");
      p.setAttribute("stroke", c);
      p.setAttribute("vector-effect", "non-scaling-stroke");
      svg.append(p);
    }
    const r = document.createElementNS(ns, "rect");
    r.setAttribute("x", d.box[0]);
    r.setAttribute("y", d.box[1]);
    r.setAttribute("width", d.box[2] - d.box[0]);
    r.setAttribute("height", d.box[3] - d.box[1]);
    r.setAttribute("fill", "none");
    r.setAttribute("stroke", c);
    r.setAttribute("stroke-width", "2");
    r.setAttribute("vector-effect", "non-scaling-stroke");
    r.setAttribute("class", "box");
    r.dataset.class = d.class_name;
    svg.append(r);
  }
  return svg;
}

function summaryText(f) {
  const counts = {};
  for (const d of f.detections) counts[d.class_name] = (counts[d.class_name] || 0) + 1;
  const parts = Object.keys(counts).sort().map((k) => `${counts[k]} ${k}`);
  return parts.length ? parts.join(", ") : "no detections";
}

function setupLive() {
  const list = document.getElementById("live");
  if (!list) return;
  const status = document.getElementById("live-status");
  let n = 0;
  const source = new EventSource(list.dataset.source);
  source.addEventListener("open", () => { status.textContent = "connected: waiting for frames…"; });
  source.addEventListener("error", () => { status.textContent = "reconnecting…"; });
  source.addEventListener("problem", (ev) => {
    status.textContent = JSON.parse(ev.data).message;
  });
  source.addEventListener("frame", (ev) => {
    const f = JSON.parse(ev.data);
    n += 1;
    status.textContent = `${n} frame${n === 1 ? "" : "s"} received; newest first`;
    const li = document.createElement("li");
    li.className = "frame-card";
    li.dataset.frameId = f.frame_id;
    li.dataset.camera = f.camera_id;
    const a = document.createElement("a");
    a.href = f.links.page;
    const pic = document.createElement("div");
    pic.className = "pic";
    const img = document.createElement("img");
    img.src = f.links.thumbnail;
    img.alt = `frame ${f.frame_id}`;
    img.width = f.width;
    img.height = f.height;
    pic.append(img, svgOverlay(f));
    const cap = document.createElement("div");
    cap.className = "caption";
    const b = document.createElement("b");
    b.textContent = `${f.camera_id} #${f.frame_id}`;
    cap.append(b, ` ${f.time}`, document.createElement("br"),
               `${f.bpp.toFixed(3)} bpp · ${summaryText(f)}`);
    a.append(pic, cap);
    li.append(a);
    list.prepend(li);
    while (list.children.length > 60) list.lastElementChild.remove();
  });
  window.addEventListener("pagehide", () => source.close());
}

document.addEventListener("DOMContentLoaded", () => {
  paintSwatches(document);
  setupFrame();
  setupLive();
});
