// sparsescope dashboard: start/stop a run, follow its stream, draw loss and topology live.
import { decodeBits, decodeIndices } from "./codec.js";

const COLORS = { inactive: "#eef1f4", kept: "#3d4a5a", added: "#2563eb", removed: "#dc2626" };
// Cell states drawn by the heatmaps: 0 inactive, 1 kept, 2 added, 3 removed (this rewire).
const COLORSCALE = [
  [0, COLORS.inactive], [0.1667, COLORS.inactive], [0.1667, COLORS.kept], [0.5, COLORS.kept],
  [0.5, COLORS.added], [0.8333, COLORS.added], [0.8333, COLORS.removed], [1, COLORS.removed],
];
const ACTIVE = new Set(["queued", "running"]);

const $ = (id) => document.getElementById(id);
const view = {
  runId: null, socket: null, status: "idle", layers: new Map(), loss: { x: [], y: [] },
  testAccuracy: { x: [], y: [] }, dirty: new Set(), frame: 0, lastSeq: 0,
};
// Read by the browser tests: how many topology frames were applied, and at which step.
window.sparsescope = { framesApplied: 0, lastStep: 0, view };

function setStatus(status) {
  view.status = status;
  const badge = $("status");
  badge.textContent = status;
  badge.dataset.status = status;
  $("stop").disabled = !ACTIVE.has(status);
}

function resetView() {
  view.layers.clear();
  view.loss = { x: [], y: [] };
  view.testAccuracy = { x: [], y: [] };
  view.dirty.clear();
  view.lastSeq = 0;
  $("heatmaps").replaceChildren();
  drawLoss();
}

function layoutLayers(meta) {
  const container = $("heatmaps");
  container.replaceChildren();
  view.layers.clear();
  meta.layers.forEach((layer, index) => {
    const [rows, cols] = layer.matrix;
    const div = document.createElement("div");
    div.className = "heatmap";
    div.id = `heatmap-${index}`;
    div.dataset.layer = layer.name;
    div.setAttribute("role", "img");
    div.setAttribute("aria-label", `connections of ${layer.name}`);
    container.appendChild(div);
    view.layers.set(index, { name: layer.name, rows, cols, state: new Uint8Array(rows * cols),
                             div, step: null, active: 0 });
  });
}

function applyTopology(event) {
  const layer = view.layers.get(event.index);
  if (!layer) return;
  const state = layer.state;
  if (event.keyframe) {
    const bits = decodeBits(event.bits, state.length);
    if (layer.step === null) {
      for (let i = 0; i < state.length; i++) state[i] = bits[i];
    } else {
      // A keyframe stored at a rewire: its net changes are the difference to what we show.
      for (let i = 0; i < state.length; i++) {
        const was = state[i] === 1 || state[i] === 2;
        state[i] = bits[i] ? (was ? 1 : 2) : (was ? 3 : 0);
      }
    }
  } else {
    // Marks of the previous rewire fade: added → kept, removed → inactive.
    for (let i = 0; i < state.length; i++) {
      if (state[i] === 2) state[i] = 1; else if (state[i] === 3) state[i] = 0;
    }
    for (const i of decodeIndices(event.added)) state[i] = 2;
    for (const i of decodeIndices(event.removed)) state[i] = 3;
  }
  layer.step = event.step;
  layer.active = event.active;
  view.dirty.add(event.index);
  window.sparsescope.framesApplied += 1;
  window.sparsescope.lastStep = event.step;
  scheduleDraw();
}

function scheduleDraw() {
  if (view.frame) return;
  // At most one redraw per animation frame, whatever the event rate.
  view.frame = requestAnimationFrame(() => {
    view.frame = 0;
    for (const index of view.dirty) drawLayer(view.layers.get(index));
    view.dirty.clear();
    drawLoss();
  });
}

function drawLayer(layer) {
  const z = [];
  for (let r = 0; r < layer.rows; r++) {
    z.push(Array.from(layer.state.subarray(r * layer.cols, (r + 1) * layer.cols)));
  }
  const trace = { type: "heatmap", z, zmin: 0, zmax: 3, colorscale: COLORSCALE,
                  showscale: false, hovertemplate: "out %{y}, in %{x}<extra></extra>" };
  const layout = {
    title: { text: `${layer.name} · ${layer.rows}×${layer.cols} · ${layer.active} active · step ${layer.step}` },
    margin: { l: 40, r: 10, t: 36, b: 30 }, yaxis: { autorange: "reversed" },
    xaxis: { title: { text: "input" } },
  };
  Plotly.react(layer.div, [trace], layout, { displayModeBar: false, responsive: true });
  layer.div.dataset.step = String(layer.step);
  layer.div.dataset.active = String(layer.active);
}

function drawLoss() {
  const traces = [
    { type: "scatter", mode: "lines", name: "train loss", x: view.loss.x, y: view.loss.y },
    { type: "scatter", mode: "lines+markers", name: "test accuracy", x: view.testAccuracy.x,
      y: view.testAccuracy.y, yaxis: "y2" },
  ];
  const layout = {
    title: { text: "Loss and held-out accuracy" }, margin: { l: 50, r: 50, t: 36, b: 36 },
    xaxis: { title: { text: "step" } }, yaxis: { title: { text: "loss" } },
    yaxis2: { title: { text: "accuracy" }, overlaying: "y", side: "right", range: [0, 1] },
    legend: { orientation: "h", y: -0.2 },
    datarevision: view.loss.x.length + view.testAccuracy.x.length,
  };
  Plotly.react($("loss-chart"), traces, layout, { displayModeBar: false, responsive: true });
}

function handleEvent(event) {
  if (event.seq !== undefined) view.lastSeq = event.seq;
  switch (event.type) {
    case "meta": layoutLayers(event); break;
    case "topology": applyTopology(event); break;
    case "metrics":
      if (event.loss !== null && event.loss !== undefined) {
        view.loss.x.push(event.step); view.loss.y.push(event.loss); scheduleDraw();
      }
      break;
    case "eval":
      view.testAccuracy.x.push(event.step); view.testAccuracy.y.push(event.test_accuracy);
      scheduleDraw();
      break;
    case "status": setStatus(event.status); refreshRuns(); break;
    case "end": closeSocket(); refreshRuns(); break;
    default: break;
  }
}

function closeSocket() {
  if (view.socket) { view.socket.onclose = null; view.socket.close(); view.socket = null; }
  $("connection").dataset.state = "closed";
}

function watch(runId, label) {
  closeSocket();
  resetView();
  view.runId = runId;
  $("run-label").textContent = label || runId;
  connect(0);
  highlightRun();
}

function connect(fromSeq) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}/ws/runs/${view.runId}?from_seq=${fromSeq}`);
  view.socket = socket;
  socket.onopen = () => { $("connection").dataset.state = "open"; };
  socket.onmessage = (message) => handleEvent(JSON.parse(message.data));
  socket.onclose = () => {
    $("connection").dataset.state = "closed";
    // Dropped mid-run: resume after the last event we applied, losing nothing.
    if (view.socket === socket && ACTIVE.has(view.status)) {
      setTimeout(() => { if (view.socket === socket) connect(view.lastSeq + 1); }, 1000);
    }
  };
}

async function api(path, options = {}) {
  const response = await fetch(path, { headers: { "Content-Type": "application/json" }, ...options });
  if (!response.ok) throw new Error(`${options.method || "GET"} ${path}: ${response.status}`);
  return response.status === 204 ? null : response.json();
}

async function startRun() {
  const button = $("start");
  button.disabled = true;
  try {
    const run = await api("/api/runs", { method: "POST", body: "{}" });
    setStatus(run.status);
    watch(run.id, run.name);
  } catch (error) {
    $("run-label").textContent = String(error);
  } finally {
    button.disabled = false;
  }
}

async function stopRun() {
  if (!view.runId) return;
  try {
    const run = await api(`/api/runs/${view.runId}/stop`, { method: "POST" });
    setStatus(run.status);
  } catch (error) {
    $("run-label").textContent = String(error);
  }
}

async function refreshRuns() {
  let runs;
  try { runs = await api("/api/runs"); } catch { return; }
  const list = $("runs");
  list.replaceChildren(...runs.map((run) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.runId = run.id;
    const best = run.summary.best_test_accuracy;
    button.innerHTML = "";
    button.append(run.name);
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = `${run.status}` + (best != null ? ` · best ${(best * 100).toFixed(1)}%` : "");
    button.append(meta);
    button.addEventListener("click", () => { setStatus(run.status); watch(run.id, run.name); });
    item.append(button);
    return item;
  }));
  highlightRun();
}

function highlightRun() {
  for (const button of document.querySelectorAll("#runs button")) {
    button.setAttribute("aria-current", String(button.dataset.runId === view.runId));
  }
}

$("start").addEventListener("click", startRun);
$("stop").addEventListener("click", stopRun);
drawLoss();
refreshRuns();
setInterval(refreshRuns, 5000);
