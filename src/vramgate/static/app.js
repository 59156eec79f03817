// vramgate's status page: reads /gateway/status, follows /admin/events live, and loads or
// unloads models (admin key). SSE is read with fetch (not EventSource) so that the API key can
// travel in a header, never in a URL.
"use strict";

const COLORS = ["#0969da", "#bf3989", "#1a7f37", "#9a6700", "#8250df", "#cf222e", "#1b7c83", "#953800"];
const $ = (sel) => document.querySelector(sel);
let key = localStorage.getItem("vramgate.key") || "";
let logStream = null;

function headers() {
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function call(method, path) {
  const resp = await fetch(path, { method, headers: headers() });
  if (resp.status === 401 || resp.status === 403) {
    $("#keyform").hidden = false;
  }
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    throw new Error(body.error ? body.error.message : `${method} ${path}: HTTP ${resp.status}`);
  }
  return body;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function color(name, names) {
  return COLORS[names.indexOf(name) % COLORS.length];
}

function renderGpus(status) {
  const box = $("#gpus");
  if (!status.gpus.length) return;
  box.replaceChildren();
  const names = status.models.map((m) => m.name);
  for (const gpu of status.gpus) {
    const bar = el("div", { class: "bar" });
    let ours = 0;
    for (const m of status.models) {
      if (!(m.gpus || []).includes(gpu.index)) continue;
      const mib = Math.round((m.used_mib || m.footprint_mib || 0) / m.gpus.length);
      ours += m.used_mib ? mib : 0;
      const seg = el("div", { class: "seg", "data-model": m.name, title: `${m.name}: ${mib} MiB` }, m.name);
      seg.style.width = `${(100 * mib) / gpu.total_mib}%`;
      seg.style.background = color(m.name, names);
      bar.append(seg);
    }
    const other = Math.max(0, gpu.used_mib - ours);
    if (other) {
      const seg = el("div", { class: "seg other", title: `other processes: ${other} MiB` });
      seg.style.width = `${(100 * other) / gpu.total_mib}%`;
      bar.append(seg);
    }
    const reserved = el("div", { class: "seg reserved", title: `reserved: ${gpu.reserved_mib} MiB` });
    reserved.style.width = `${(100 * gpu.reserved_mib) / gpu.total_mib}%`;
    bar.append(reserved);
    const where = gpu.node ? ` on node ${gpu.node}` : "";
    const label = el("div", { class: "label" },
      `GPU ${gpu.index}${where} (${gpu.kind}): ${gpu.used_mib} of ${gpu.total_mib} MiB used, ` +
      `${gpu.free_mib} free, ${gpu.reserved_mib} reserved`);
    box.append(el("div", { class: "gpu", "data-gpu": gpu.index }, label, bar));
  }
}

// A cluster's nodes: live ones with their GPUs and engines, dead ones with why.
function renderNodes(status) {
  const nodes = status.nodes || [];
  $("#nodesection").hidden = !nodes.length;
  const body = $("#nodes tbody");
  body.replaceChildren();
  for (const n of nodes) {
    const state = el("span", { class: `state ${n.alive ? "ready" : "failed"}` }, n.alive ? "alive" : "dead");
    if (n.why_dead) state.title = n.why_dead;
    body.append(el("tr", { "data-node": n.name },
      el("td", {}, n.name), el("td", {}, state), el("td", {}, n.address),
      el("td", {}, n.gpus.join(",") || "-"), el("td", {}, n.engines.join(", ") || "-"),
      el("td", {}, n.host_available_mib == null ? "-" : `${n.host_available_mib} MiB`)));
  }
}

function renderModels(status) {
  const body = $("#models tbody");
  body.replaceChildren();
  for (const m of status.models) {
    // On the CPU (asked, or no GPU seen) what it holds is host RAM: shown as such, never "0 MiB".
    const onCpu = m.device === "cpu";
    const [mib, source] = onCpu ? [m.ram_mib, m.ram_source] : [m.footprint_mib, m.footprint_source];
    const footprint = (onCpu ? "RAM " : "") + (mib == null ? source : `${mib} MiB (${source})`);
    const running = ["starting", "ready", "stopping", "sleeping"].includes(m.state);
    const action = running
      ? el("button", { type: "button", "data-action": "unload", onclick: () => act("unload", m.name) }, "Unload")
      : el("button", { type: "button", "data-action": "load", onclick: () => act("load", m.name) }, "Load");
    const logs = el("button", { type: "button", "data-action": "logs", onclick: () => openLog(m.name) }, "Log");
    const asleep = m.state === "sleeping" && m.host_mib != null ? ` (${m.host_mib} MiB RAM)` : "";
    const woke = m.wake_s != null ? ` · woke in ${m.wake_s.toFixed(2)} s` : "";
    const state = el("span", { class: `state ${m.state}` },
      m.state + asleep + (m.pinned ? " (pinned)" : ""));
    if (woke) state.append(el("small", { class: "muted" }, woke));
    if (m.last_error) state.title = m.last_error;
    body.append(el("tr", { "data-model": m.name },
      el("td", {}, m.name), el("td", {}, state), el("td", {}, m.engine), el("td", {}, footprint || "-"),
      el("td", {}, ((m.gpus || []).join(",") || (onCpu ? "CPU" : "-")) + (m.node ? ` @ ${m.node}` : "")),
      el("td", {}, String(m.in_flight)),
      el("td", {}, String(m.queued)), el("td", {}, String(m.requests)), el("td", {}, String(m.starts)),
      el("td", {}, action, " ", logs)));
  }
}

const SVG = "http://www.w3.org/2000/svg";
const MARKS = { start: "▲", stop: "▼", sleep: "z", wake: "↑" };

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

// A round number at or above `mib` for a chart's top (1, 1.5, 2, 3, 4, 5, 6 or 8 times a power of ten).
function niceCeil(mib) {
  const ten = 10 ** Math.floor(Math.log10(Math.max(mib, 1)));
  return [1, 1.5, 2, 3, 4, 5, 6, 8, 10].map((k) => k * ten).find((v) => v >= mib);
}

// One stacked area chart per device (GPU or host RAM): MiB by model over time, other programs'
// use on top in grey, and a mark at each start, stop, sleep and wake of a model there.
function renderCharts(history, names) {
  const box = $("#charts");
  box.replaceChildren();
  // The last hour, or since the first sample where the gateway is younger (10 s at least).
  const W = 1000, H = 160, end = history.now;
  const first = history.samples.length ? history.samples[0].t : end;
  const start = Math.max(end - history.window_s, Math.min(first - 1, end - 10));
  const x = (t) => ((t - start) / (end - start)) * W;
  for (const device of history.devices) {
    const samples = history.samples.filter((s) => s.devices[device.id]);
    // Scaled to the device where its use reaches a quarter of it; below that, to the peak of
    // the window (a few hundred MiB of models in a 22 GiB host budget drew a hairline at the
    // bottom): the label says the scale then.
    const peak = Math.max(0, ...samples.map((s) => Object.values(s.devices[device.id])
      .reduce((a, b) => a + b, 0)));
    const total = Math.max(device.total_mib, 1);
    const zoomed = peak > 0 && peak * 4 < total;
    const top = zoomed ? niceCeil(peak * 1.25) : total;
    const y = (mib) => H - (Math.min(mib, top) / top) * H;
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none",
      class: "chart", "data-device": device.id, role: "img" });
    chart.append(svg("rect", { x: 0, y: 0, width: W, height: H, class: "frame" }));
    const layers = [...new Set(samples.flatMap((s) => Object.keys(s.devices[device.id])))]
      .sort((a, b) => (a === "others") - (b === "others") || names.indexOf(a) - names.indexOf(b));
    const below = samples.map(() => 0);
    for (const layer of layers) {
      const above = samples.map((s, i) => below[i] + (s.devices[device.id][layer] || 0));
      if (samples.length && above.some((v, i) => v !== below[i])) {
        // Steps: a value holds until the next sample.
        let d = `M ${x(samples[0].t)} ${y(below[0])}`;
        samples.forEach((s, i) => {
          const next = i + 1 < samples.length ? samples[i + 1].t : end;
          d += ` L ${x(s.t)} ${y(above[i])} L ${x(next)} ${y(above[i])}`;
        });
        for (let i = samples.length - 1; i >= 0; i--) {
          const next = i + 1 < samples.length ? samples[i + 1].t : end;
          d += ` L ${x(next)} ${y(below[i])} L ${x(samples[i].t)} ${y(below[i])}`;
        }
        const path = svg("path", { d: d + " Z", "data-model": layer,
          class: layer === "others" ? "others" : "layer" });
        if (layer !== "others") path.setAttribute("fill", color(layer, names));
        path.append(svg("title"));
        path.firstChild.textContent = layer === "others" ? "other programs" : layer;
        chart.append(path);
      }
      above.forEach((v, i) => { below[i] = v; });
    }
    const here = new Set(layers);
    for (const mark of history.marks) {
      if (!here.has(mark.model) || mark.t < start) continue;
      const at = x(mark.t);
      const line = svg("line", { x1: at, x2: at, y1: 0, y2: H, class: `mark ${mark.kind}`,
        "data-kind": mark.kind, "data-model": mark.model });
      const label = svg("text", { x: at + 2, y: 12, class: `mk ${mark.kind}` });
      label.textContent = MARKS[mark.kind] || "•";
      line.append(svg("title"));
      line.firstChild.textContent = `${mark.kind} ${mark.model} at ${new Date(mark.t * 1000).toLocaleTimeString()}`;
      chart.append(line, label);
    }
    const now = samples.length ? samples[samples.length - 1].devices[device.id] : {};
    const used = Object.values(now).reduce((a, b) => a + b, 0);
    box.append(el("div", { class: "device" },
      el("div", { class: "label" }, `${device.label}: ${used} of ${device.total_mib} MiB now · ` +
        (zoomed ? `chart to ${top} MiB · ` : "") +
        `the last ${Math.round((end - start) / 60) || "<1"} min`),
      chart));
  }
}

async function refreshCharts(names) {
  try {
    renderCharts(await call("GET", "/gateway/memory-history"), names);
  } catch (err) {
    $("#error").textContent = err.message;
  }
}

function renderEvents(events) {
  const list = $("#events");
  list.replaceChildren();
  for (const e of events.slice().reverse()) {
    const when = new Date(e.time * 1000).toLocaleTimeString();
    list.append(el("li", {}, el("time", {}, when), e.message));
  }
}

async function refresh() {
  try {
    const status = await call("GET", "/gateway/status");
    $("#version").textContent = `${status.version} · up ${Math.round(status.uptime_s)} s`;
    renderGpus(status);
    renderNodes(status);
    renderModels(status);
    renderEvents(status.events);
    await refreshCharts(status.models.map((m) => m.name));
    $("#error").textContent = "";
  } catch (err) {
    $("#error").textContent = err.message;
  }
}

async function act(what, name) {
  try {
    $("#error").textContent = `${what === "load" ? "loading" : "unloading"} ${name}…`;
    await call("POST", `/admin/models/${name}/${what}`);
    $("#error").textContent = "";
  } catch (err) {
    $("#error").textContent = err.message;
  }
  refresh();
}

// Reads an SSE stream with fetch; calls onData with each parsed `data:` payload.
async function follow(path, onData, signal) {
  const resp = await fetch(path, { headers: headers(), signal });
  if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status}`);
  if (path.startsWith("/admin/events")) $("#live").classList.add("on");
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffered += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffered.indexOf("\n\n")) >= 0) {
      const event = buffered.slice(0, cut);
      buffered = buffered.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (line.startsWith("data: ")) onData(JSON.parse(line.slice(6)));
      }
    }
  }
}

let pending = null;
function refreshSoon() {
  if (pending) return;
  pending = setTimeout(() => { pending = null; refresh(); }, 100);
}

let events = null;  // the AbortController of the live event stream

// Follows /admin/events; reconnects 2 s after a failure, at once after a new key.
async function followEvents() {
  if (events) events.abort();
  const mine = (events = new AbortController());
  while (!mine.signal.aborted) {
    try {
      await follow("/admin/events?recent=0", refreshSoon, mine.signal);
    } catch (err) {
      if (err.name === "AbortError") return;
      if (err.message.includes("HTTP 401") || err.message.includes("HTTP 403")) {
        $("#keyform").hidden = false;
      }
    }
    $("#live").classList.remove("on");
    await new Promise((r) => setTimeout(r, 2000));
  }
}

function openLog(name) {
  if (logStream) logStream.abort();
  logStream = new AbortController();
  $("#logname").textContent = name;
  $("#logpanel").hidden = false;
  const pre = $("#log");
  pre.textContent = "";
  follow(`/admin/models/${name}/logs/stream?tail=200`, (item) => {
    if (item.line !== undefined) pre.textContent += item.line + "\n";
    pre.scrollTop = pre.scrollHeight;
  }, logStream.signal).catch((err) => {
    if (err.name !== "AbortError") pre.textContent += `[${err.message}]\n`;
  });
}

$("#closelog").addEventListener("click", () => {
  if (logStream) logStream.abort();
  $("#logpanel").hidden = true;
});
$("#keyform").addEventListener("submit", (ev) => {
  ev.preventDefault();
  key = $("#key").value.trim();
  localStorage.setItem("vramgate.key", key);
  $("#keyform").hidden = true;
  refresh();
  followEvents();
});

refresh();
followEvents();
setInterval(refresh, 5000);  // uptime, idle times; events bring the rest at once
