// sparsescope dashboard: runs list, new-run form, live/replay view of one run, comparison.
//
// Every event is applied to a RunModel as it arrives (cheap: O(changes) per delta); drawing
// happens at most once per animation frame and shows only the newest state, so a burst of
// frames is absorbed by skipping intermediate pictures, never by falling behind.
import { api } from "./api.js";
import * as codec from "./codec.js";
import { compareChart, COMPARE_METRICS, drawChart, runCharts } from "./charts.js";
import { RunForm } from "./form.js";
import { AUTO_DENSITY_ABOVE, InputPanel, LayerPanel, PALETTES } from "./heatmap.js";
import { RunModel } from "./model.js";
import { ACTIVE, RunsList } from "./runs.js";
import { RunStream, streamCounts } from "./stream.js";

const $ = (id) => document.getElementById(id);
const CHART_INTERVAL_MS = 250; // charts are cheap to skip; heatmaps get the frame budget
// The input-pixel view is an aggregate like the charts: while following live or playing it is
// redrawn at most this often (always with the newest frame); scrubbing redraws it at once.
const INPUT_INTERVAL_MS = 250;
const RUNS_POLL_MS = 3000;
const CONNECTION_TEXT = { connecting: "connecting…", open: "live", retrying: "reconnecting…",
                          closed: "no stream", ended: "replay complete", unreachable: "server unreachable" };

let serverReachable = true; // false while the runs poll gets no answer at all
const ui = {
  palette: PALETTES[localStorage.getItem("sparsescope.palette") || "standard"] || PALETTES.standard,
  route: "runs",
  // the run view
  model: null, stream: null, panels: [], inputPanel: null, position: -1, live: true,
  playing: false, playTimer: 0, mode: "auto", shownPosition: null, painting: false,
  topologyDirty: false, chartsDirty: false, lastChartDraw: 0, chartTimer: 0, frame: 0,
  inputDirty: false, lastInputDraw: -Infinity, inputTimer: 0,
  // compare
  compare: { models: [], streams: [], panels: [], steps: [], position: -1, live: true, playing: false,
             timer: 0, dirty: false, chartsDirty: false, lastChartDraw: 0, layer: 0, key: "" },
};

// Test hook: counters of the real apply and draw paths, and a way to feed frames through them.
const perf = { applyMs: [], drawMs: [], paintMs: [], draws: 0, animationFrames: 0, framesSkipped: 0 };
window.sparsescope = {
  framesApplied: 0, lastStep: 0, perf, codec, streamCounts,
  get model() { return ui.model; },
  get position() { return ui.position; },
  get panels() { return ui.panels; },
  get inputPanel() { return ui.inputPanel; },
  feed: (message) => feedRunEvent(message),
  openLocal: (run) => openModel(new RunModel({ status: "running", ...run }), null),
  dropConnection: () => ui.stream && ui.stream.drop(),
  // Resolves once the newest heatmap picture requested is on screen (input view not included).
  heatmapsPainted: () => lastHeatmapPaint,
  // Resolves once every picture requested so far is on screen.
  drawn: async () => {
    for (;;) {
      await Promise.all(pendingPaints);
      await new Promise((resolve) => requestAnimationFrame(() => resolve()));
      if (!ui.painting && ((!ui.topologyDirty && !ui.inputDirty) || ui.route !== "run" || !ui.model)) return;
    }
  },
};
let pendingPaints = [];
let lastHeatmapPaint = Promise.resolve();

// ---------------------------------------------------------------- top bar and routing

function setStatus(status) {
  const badge = $("status");
  badge.textContent = status;
  badge.dataset.status = status;
  $("stop").disabled = !ACTIVE.has(status);
}

function setConnection(state) {
  // While the server does not answer, a stream's retry says "reconnecting…" only once it is back.
  if (state === "retrying" && !serverReachable) state = "unreachable";
  $("connection").dataset.state = state;
  $("connection-text").textContent = CONNECTION_TEXT[state] || state;
}

function route() {
  const [, view = "", arg = ""] = location.hash.split("/");
  const name = ["runs", "new", "run", "compare"].includes(view) ? view : "runs";
  ui.route = name;
  for (const section of ["runs", "new", "run", "compare"]) {
    $(`view-${section}`).hidden = section !== name;
    $(`tab-${section}`).setAttribute("aria-current", section === name ? "page" : "false");
  }
  if (name === "run" && arg && (!ui.model || ui.model.id !== arg)) openRunById(arg);
  if (name === "run") { resizePlots($("view-run")); scheduleDraw(true); }
  if (name === "compare") {
    const ids = decodeURIComponent(arg).split(",").filter(Boolean);
    // A compare link ticks its runs in the picker (and the runs list) too.
    if (ids.length >= 2) for (const id of ids) runsList.selected.add(id);
    if (ids.length >= 2 && ids.join(",") !== ui.compare.key) loadCompare(ids);
    renderPicker();
    resizePlots($("view-compare"));
  }
  if (name === "runs") runsList.refresh();
}

function resizePlots(root) {
  // Plots drawn while their view was hidden have no size yet.
  requestAnimationFrame(() => {
    for (const div of root.querySelectorAll(".js-plotly-plot")) {
      if (div.isConnected && div._fullLayout) Plotly.Plots.resize(div);
    }
  });
}

function go(hash) {
  if (location.hash === hash) route(); else location.hash = hash;
}

// ---------------------------------------------------------------- the run view

function closeRun() {
  if (ui.stream) ui.stream.close();
  ui.stream = null;
  stopPlaying();
  for (const panel of ui.panels) panel.remove();
  if (ui.inputPanel) ui.inputPanel.remove();
  ui.panels = [];
  ui.inputPanel = null;
  ui.model = null;
  ui.position = -1;
  ui.shownPosition = null;
  clearTimeout(ui.inputTimer);
  ui.inputTimer = 0;
  ui.inputDirty = false;
  ui.lastInputDraw = -Infinity;
  // A new run starts its charts from scratch (no axis ranges carried over from the last one).
  for (const chart of document.querySelectorAll("#charts .chart")) Plotly.purge(chart);
  window.sparsescope.framesApplied = 0;
  window.sparsescope.lastStep = 0;
}

function openModel(model, streamFactory) {
  closeRun();
  ui.model = model;
  ui.live = true;
  $("live").setAttribute("aria-pressed", "true");
  $("run-empty").hidden = true;
  $("run-body").hidden = false;
  $("run-title").textContent = model.name;
  $("run-label").textContent = model.name;
  $("run-error").textContent = model.error || "";
  describeRun(model);
  setStatus(model.status);
  if (streamFactory) ui.stream = streamFactory(model);
  else setConnection("closed");
  ui.chartsDirty = true;
  scheduleDraw();
  return model;
}

function describeRun(model) {
  const config = model.run.config || {};
  const meta = model.meta;
  const parts = [];
  if (config.task) {
    const hidden = Array.isArray(config.hidden) ? `[${config.hidden.join(", ")}]` : "";
    parts.push(`${config.task} · ${config.model} ${hidden} · ${config.method} · density ${config.density}`);
  }
  if (meta) parts.push(`${meta.total_steps} steps, rewire every ${meta.schedule?.interval_steps} (${meta.schedule?.kind})`);
  parts.push(model.id);
  $("run-info").textContent = parts.join(" · ");
  $("run-provenance").textContent = provenance(model.run.info);
}

// Who recorded the run and with what, from the run's `info` (absent on old runs).
export function provenance(info) {
  if (!info || typeof info !== "object") return "";
  const parts = [];
  if (info.writer) parts.push(`recorded by ${info.writer}`);
  if (info.sparsescope) parts.push(`sparsescope ${info.sparsescope}`);
  if (info.torch) parts.push(`torch ${info.torch}`);
  if (info.python) parts.push(`python ${info.python}`);
  if (info.git_commit) parts.push(`commit ${String(info.git_commit).slice(0, 10)}`);
  if (info.seed !== undefined && info.seed !== null) parts.push(`seed ${info.seed}`);
  return parts.join(" · ");
}

function openRun(run) {
  const model = new RunModel(run);
  openModel(model, (m) => new RunStream(m, { onEvent: handleRunEvent, onState: setConnection }).open());
  if (location.hash !== `#/run/${run.id}`) location.hash = `#/run/${run.id}`;
}

// A run named in the URL: looked up in the list first, so a deleted run's link gives a message
// on the runs view instead of a failed request (which the browser would log as an error).
async function openRunById(id) {
  try {
    const runs = await runsList.refresh();
    const run = runs.find((item) => item.id === id);
    if (!run) {
      runsMessage(`Run ${id} does not exist (deleted?). Pick another one below.`);
      go("#/runs");
      return;
    }
    openRun(run);
  } catch (error) {
    runsMessage(`Could not open run ${id}: ${error.message}`);
    go("#/runs");
  }
}

// Feed one message (a parsed event or a binary ArrayBuffer) through the same path as the socket.
function feedRunEvent(message) {
  const event = message instanceof ArrayBuffer ? codec.decodeBinaryFrame(message) : message;
  handleRunEvent(event);
}

function handleRunEvent(event) {
  const model = ui.model;
  if (!model) return;
  if (event.type === "error") {
    // The server refused the stream (deleted run, wrong token): say so instead of waiting.
    $("run-error").textContent = event.error || "the stream was refused";
    return;
  }
  const started = performance.now();
  const change = model.handle(event);
  if (!change) return;
  switch (change) {
    case "meta": layoutPanels(model); describeRun(model); break;
    case "topology": {
      perf.applyMs.push(performance.now() - started);
      if (perf.applyMs.length > 2000) perf.applyMs.splice(0, 1000);
      window.sparsescope.framesApplied = model.framesApplied;
      window.sparsescope.lastStep = event.step;
      if (ui.live) ui.position = model.steps.length - 1;
      ui.topologyDirty = true;
      break;
    }
    case "metrics": ui.chartsDirty = true; break;
    case "status":
      setStatus(model.status);
      $("run-error").textContent = model.error || "";
      // The worker records who wrote the run (`info`) as it starts: pick it up for the header.
      runsList.refresh().then((runs) => {
        const fresh = runs.find((run) => run.id === model.id);
        if (fresh && ui.model === model) { model.run = { ...model.run, info: fresh.info }; describeRun(model); }
      });
      break;
    case "end":
      setStatus(model.status);
      runsList.refresh();
      break;
    default: break;
  }
  scheduleDraw();
}

function layoutPanels(model) {
  for (const panel of ui.panels) panel.remove();
  if (ui.inputPanel) ui.inputPanel.remove();
  const container = $("heatmaps");
  container.replaceChildren();
  ui.inputPanel = model.layers.length ? new InputPanel(container, model.meta, model.layers[0]) : null;
  ui.panels = model.layers.map((layer, index) => new LayerPanel(container, layer, { id: `heatmap-${index}` }));
}

function modeFor(layer, mode) {
  if (mode !== "auto") return mode;
  return layer.size > AUTO_DENSITY_ABOVE ? "density" : "connections";
}

function scheduleDraw(force = false) {
  if (force) { ui.topologyDirty = true; ui.chartsDirty = true; ui.shownPosition = null; }
  if (ui.frame) return;
  // At most one redraw per animation frame, whatever the event rate.
  ui.frame = requestAnimationFrame(drawRun);
}

function drawRun(now) {
  ui.frame = 0;
  perf.animationFrames += 1;
  const model = ui.model;
  if (!model || ui.route !== "run") return;
  updateScrubber();
  // One picture in flight at a time: frames arriving meanwhile only mark the view dirty, and the
  // next picture shows the newest of them (the ones in between are skipped, never queued).
  if (ui.topologyDirty && ui.position >= 0 && !ui.painting) {
    ui.topologyDirty = false;
    const started = performance.now();
    const step = model.steps[ui.position];
    if (ui.shownPosition !== null && ui.position > ui.shownPosition + 1) {
      perf.framesSkipped += ui.position - ui.shownPosition - 1;
    }
    const paints = [];
    let firstState = null;
    ui.panels.forEach((panel, index) => {
      const layer = model.layers[index];
      const state = layer.state(layer.frameAt(step));
      if (index === 0) firstState = state;
      if (state) paints.push(panel.draw(state, modeFor(layer, ui.mode), ui.palette));
    });
    if (ui.inputPanel && firstState) ui.inputDirty = true;
    ui.shownPosition = ui.position;
    perf.draws += 1;
    const drawn = performance.now() - started;
    perf.drawMs.push(drawn);
    ui.painting = true;
    const all = Promise.all(paints).then(() => {
      perf.paintMs.push(performance.now() - started);
      if (perf.paintMs.length > 2000) perf.paintMs.splice(0, 1000);
    }).finally(() => {
      ui.painting = false;
      if (ui.topologyDirty) scheduleDraw();
    });
    pendingPaints = [all];
    lastHeatmapPaint = all;
    ui.chartsDirty = ui.chartsDirty || !ui.live; // the dotted step marker moved
  }
  if (ui.inputDirty) drawInput(model, now);
  if (ui.chartsDirty) {
    if (now - ui.lastChartDraw >= CHART_INTERVAL_MS) {
      ui.chartsDirty = false;
      ui.lastChartDraw = now;
      drawRunCharts(model);
    } else if (!ui.chartTimer) {
      ui.chartTimer = setTimeout(() => { ui.chartTimer = 0; scheduleDraw(); }, CHART_INTERVAL_MS);
    }
  }
}

function drawInput(model, now) {
  const following = ui.live || ui.playing;
  if (following && now - ui.lastInputDraw < INPUT_INTERVAL_MS) {
    if (!ui.inputTimer) ui.inputTimer = setTimeout(() => { ui.inputTimer = 0; scheduleDraw(); }, INPUT_INTERVAL_MS);
    return;
  }
  const layer = model.layers[0];
  const state = ui.inputPanel && layer && ui.position >= 0 ? layer.state(layer.frameAt(model.steps[ui.position])) : null;
  ui.inputDirty = false;
  ui.lastInputDraw = now;
  if (state) pendingPaints.push(ui.inputPanel.draw(state));
}

function drawRunCharts(model) {
  const charts = runCharts(model, ui.palette);
  const step = ui.position >= 0 && !ui.live ? model.steps[ui.position] : null;
  const revision = model.metrics.step.length + model.evals.step.length + model.rewires.step.length;
  for (const [key, spec] of Object.entries(charts)) drawChart($(`chart-${key}`), spec, step, revision);
}

function updateScrubber() {
  const model = ui.model;
  const scrubber = $("scrubber");
  const last = model.steps.length - 1;
  scrubber.max = String(Math.max(0, last));
  scrubber.value = String(Math.max(0, ui.position));
  scrubber.disabled = last < 0;
  const step = ui.position >= 0 ? model.steps[ui.position] : null;
  scrubber.setAttribute("aria-valuetext", step === null ? "no frames yet" : `step ${step}`);
  $("position").textContent = step === null ? "no frames yet"
    : `step ${step} · rewire ${ui.position} of ${last}${!ui.live ? "" : ACTIVE.has(model.status) ? " · live" : " · newest"}`;
  $("position").dataset.step = String(step);
}

function setPosition(position, { live = false } = {}) {
  const model = ui.model;
  if (!model || model.steps.length === 0) return;
  ui.position = Math.max(0, Math.min(model.steps.length - 1, position));
  setLive(live);
  ui.topologyDirty = true;
  scheduleDraw();
}

function setLive(live) {
  ui.live = live;
  $("live").setAttribute("aria-pressed", String(live));
  if (live && ui.model) { ui.position = ui.model.steps.length - 1; ui.topologyDirty = true; }
}

function stopPlaying() {
  ui.playing = false;
  clearInterval(ui.playTimer);
  ui.playTimer = 0;
  $("play").textContent = "Play";
  $("play").setAttribute("aria-pressed", "false");
}

function startPlaying() {
  const model = ui.model;
  if (!model || model.steps.length === 0) return;
  if (ui.position >= model.steps.length - 1) setPosition(0);
  ui.playing = true;
  $("play").textContent = "Pause";
  $("play").setAttribute("aria-pressed", "true");
  const interval = 1000 / Number($("speed").value);
  ui.playTimer = setInterval(() => {
    if (ui.position >= ui.model.steps.length - 1) {
      // Caught up: a live run keeps following, a finished one stops at its last rewire.
      if (ACTIVE.has(ui.model.status)) setLive(true);
      stopPlaying();
      return;
    }
    setPosition(ui.position + 1);
  }, interval);
}

function togglePalette() {
  const name = ui.palette === PALETTES.standard ? "colorblind" : "standard";
  ui.palette = PALETTES[name];
  localStorage.setItem("sparsescope.palette", name);
  applyPalette();
  scheduleDraw(true);
  compareDirty(true);
}

function applyPalette() {
  const name = ui.palette === PALETTES.colorblind ? "colorblind" : "standard";
  document.body.dataset.palette = name;
  $("palette").setAttribute("aria-pressed", String(name === "colorblind"));
  const root = document.documentElement.style;
  for (const key of ["inactive", "kept", "added", "removed"]) root.setProperty(`--${key}`, ui.palette[key]);
}

async function startRun() {
  const button = $("start");
  button.disabled = true;
  try {
    const run = await api("/api/runs", { method: "POST", body: {} });
    openRun(run);
    runsList.refresh();
  } catch (error) {
    $("run-label").textContent = `Start failed: ${error.message}`;
  } finally {
    button.disabled = false;
  }
}

async function stopRun() {
  if (!ui.model) return;
  try {
    const run = await api(`/api/runs/${ui.model.id}/stop`, { method: "POST" });
    if (ui.model && ui.model.id === run.id) setStatus(run.status);
  } catch (error) {
    $("run-label").textContent = `Stop failed: ${error.message}`;
  }
  runsList.refresh();
}

// ---------------------------------------------------------------- compare

function compareSteps(models) {
  const all = new Set();
  for (const model of models) for (const step of model.steps) all.add(step);
  return [...all].sort((a, b) => a - b);
}

function closeCompare() {
  const c = ui.compare;
  for (const stream of c.streams) stream.close();
  for (const panel of c.panels) if (panel) panel.remove();
  clearInterval(c.timer);
  Object.assign(c, { models: [], streams: [], panels: [], steps: [], position: -1, live: true,
                     playing: false, timer: 0, key: "" });
}

async function loadCompare(ids) {
  closeCompare();
  const c = ui.compare;
  c.key = ids.join(",");
  let runs;
  try {
    runs = await Promise.all(ids.map((id) => api(`/api/runs/${id}`)));
  } catch (error) {
    runsMessage(`Compare: ${error.message}`);
    return;
  }
  if (c.key !== ids.join(",")) return; // a newer selection replaced this one meanwhile
  c.models = runs.map((run) => new RunModel(run));
  c.streams = c.models.map((model) => new RunStream(model, {
    onEvent: (event) => {
      const change = model.handle(event);
      if (change === "meta") layoutCompare(false);
      if (change === "topology") c.dirty = true;
      if (change) c.chartsDirty = true;
      scheduleCompareDraw();
    },
  }).open());
  $("compare-body").hidden = false;
  const charts = $("compare-charts");
  charts.replaceChildren(...COMPARE_METRICS.map(([key, title]) => {
    const div = document.createElement("div");
    div.className = "chart";
    div.id = `compare-chart-${key}`;
    div.setAttribute("role", "img");
    div.setAttribute("aria-label", `${title} of the compared runs`);
    return div;
  }));
  layoutCompare();
}

// Lays out one panel per run for the chosen layer; `rebuild` false only adds missing panels
// (a run whose meta just arrived), leaving the others and their pictures alone.
function layoutCompare(rebuild = true) {
  const c = ui.compare;
  const select = $("compare-layer");
  const reference = c.models.find((model) => model.meta);
  if (reference && select.options.length !== reference.layers.length) {
    select.replaceChildren(...reference.layers.map((layer, index) => new Option(`${index}: ${layer.name}`, String(index))));
    select.value = String(Math.min(c.layer, reference.layers.length - 1));
  }
  const container = $("compare-heatmaps");
  if (rebuild) {
    for (const panel of c.panels) if (panel) panel.remove();
    container.replaceChildren();
    c.panels = [];
  }
  // Panels in run order, whichever run's meta arrived first.
  c.panels = c.models.map((model, index) => {
    const layer = model.layers[c.layer];
    const existing = c.panels[index];
    if (existing && existing.layer === layer) return existing;
    if (existing) existing.remove();
    return layer ? new LayerPanel(container, layer, { title: model.name, id: `compare-heatmap-${index}` }) : null;
  });
  for (const panel of c.panels) if (panel) container.append(panel.root);
  compareDirty(true);
}

function compareDirty(charts = false) {
  ui.compare.dirty = true;
  if (charts) ui.compare.chartsDirty = true;
  scheduleCompareDraw();
}

let compareFrame = 0;
function scheduleCompareDraw() {
  if (compareFrame) return;
  compareFrame = requestAnimationFrame(drawCompare);
}

function drawCompare(now) {
  compareFrame = 0;
  const c = ui.compare;
  if (ui.route !== "compare" || c.models.length === 0) return;
  c.steps = compareSteps(c.models);
  if (c.live) c.position = c.steps.length - 1;
  const scrubber = $("compare-scrubber");
  scrubber.max = String(Math.max(0, c.steps.length - 1));
  scrubber.value = String(Math.max(0, c.position));
  const step = c.position >= 0 ? c.steps[c.position] : null;
  scrubber.setAttribute("aria-valuetext", step === null ? "no frames yet" : `step ${step}`);
  $("compare-position").textContent = step === null ? "no frames yet" : `step ${step}`;
  $("compare-position").dataset.step = String(step);
  if (c.dirty && step !== null) {
    c.dirty = false;
    c.models.forEach((model, index) => {
      const panel = c.panels[index];
      const layer = model.layers[c.layer];
      if (!panel || !layer) return;
      const state = layer.state(layer.frameAt(step));
      if (state) panel.draw(state, modeFor(layer, $("compare-mode").value), ui.palette);
    });
    c.chartsDirty = true;
  }
  if (c.chartsDirty) {
    if (now - c.lastChartDraw >= CHART_INTERVAL_MS) {
      c.chartsDirty = false;
      c.lastChartDraw = now;
      const marker = c.live ? null : step;
      for (const [key] of COMPARE_METRICS) {
        Plotly.react($(`compare-chart-${key}`), ...withMarker(compareChart(key, c.models, marker)),
                     { displayModeBar: false, responsive: true });
      }
    } else {
      setTimeout(scheduleCompareDraw, CHART_INTERVAL_MS);
    }
  }
}

function withMarker([traces, layout]) {
  return [traces, { ...layout, uirevision: "keep" }];
}

function setComparePosition(position) {
  const c = ui.compare;
  if (c.steps.length === 0) return;
  c.position = Math.max(0, Math.min(c.steps.length - 1, position));
  c.live = false;
  compareDirty(true);
}

function renderPicker() {
  const options = $("compare-options");
  const chosen = new Set(runsList.selected);
  options.replaceChildren(...runsList.runs.map((run) => {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = run.id;
    box.checked = chosen.has(run.id);
    box.addEventListener("change", () => {
      if (box.checked) runsList.selected.add(run.id); else runsList.selected.delete(run.id);
      runsList.render();
    });
    label.append(box, ` ${run.name} (${run.status})`);
    return label;
  }));
}

function compareSelected() {
  const ids = [...runsList.selected];
  if (ids.length < 2) { runsMessage("Pick at least two runs to compare."); return; }
  go(`#/compare/${ids.join(",")}`);
}

// ---------------------------------------------------------------- wiring

function runsMessage(text) {
  $("runs-message").textContent = text;
}

const runsList = new RunsList({
  onOpen: (run) => openRun(run),
  onStopped: (run) => { if (ui.model && ui.model.id === run.id) setStatus(run.status); },
  onDeleted: (run) => {
    if (ui.model && ui.model.id === run.id) {
      closeRun();
      $("run-body").hidden = true;
      $("run-empty").hidden = false;
      setStatus("idle");
      $("run-label").textContent = "";
      setConnection("closed");
    }
  },
  onSelection: (selected) => {
    $("compare-selected").disabled = selected.size < 2;
    $("compare-selected").textContent = `Compare selected (${selected.size})`;
    if (ui.route === "compare") renderPicker();
  },
  message: runsMessage,
});

const runForm = new RunForm($("run-form"), {
  onStarted: (run) => { openRun(run); runsList.refresh(); },
});

$("start").addEventListener("click", startRun);
$("stop").addEventListener("click", stopRun);
$("palette").addEventListener("click", togglePalette);
$("compare-selected").addEventListener("click", compareSelected);
$("compare-go").addEventListener("click", compareSelected);
$("play").addEventListener("click", () => (ui.playing ? stopPlaying() : startPlaying()));
$("step-back").addEventListener("click", () => { stopPlaying(); setPosition(ui.position - 1); });
$("step-forward").addEventListener("click", () => { stopPlaying(); setPosition(ui.position + 1); });
$("scrubber").addEventListener("input", (event) => { stopPlaying(); setPosition(Number(event.target.value)); });
$("live").addEventListener("click", () => { stopPlaying(); setLive(!ui.live); scheduleDraw(true); });
$("speed").addEventListener("change", () => { if (ui.playing) { stopPlaying(); startPlaying(); } });
$("mode").addEventListener("change", (event) => { ui.mode = event.target.value; scheduleDraw(true); });
$("compare-scrubber").addEventListener("input", (event) => setComparePosition(Number(event.target.value)));
$("compare-back").addEventListener("click", () => setComparePosition(ui.compare.position - 1));
$("compare-forward").addEventListener("click", () => setComparePosition(ui.compare.position + 1));
$("compare-play").addEventListener("click", () => {
  const c = ui.compare;
  if (c.playing) {
    c.playing = false;
    clearInterval(c.timer);
    $("compare-play").textContent = "Play";
    $("compare-play").setAttribute("aria-pressed", "false");
    return;
  }
  c.playing = true;
  $("compare-play").textContent = "Pause";
  $("compare-play").setAttribute("aria-pressed", "true");
  if (c.position >= c.steps.length - 1) setComparePosition(0);
  c.timer = setInterval(() => {
    if (c.position >= c.steps.length - 1) { $("compare-play").click(); return; }
    setComparePosition(c.position + 1);
  }, 200);
});
$("compare-layer").addEventListener("change", (event) => { ui.compare.layer = Number(event.target.value); layoutCompare(); });
$("compare-mode").addEventListener("change", () => compareDirty());
window.addEventListener("hashchange", route);
// Shortcuts in the run view when no control has the focus: ← / → one rewire, space play/pause.
document.addEventListener("keydown", (event) => {
  if (ui.route !== "run" || event.target !== document.body) return;
  if (event.altKey || event.ctrlKey || event.metaKey) return;
  if (event.key === "ArrowLeft") $("step-back").click();
  else if (event.key === "ArrowRight") $("step-forward").click();
  else if (event.key === " ") $("play").click();
  else return;
  event.preventDefault();
});

applyPalette();
runForm.load();
route();
// The runs list stays live by polling; while the server does not answer, the poll backs off
// (to one request every 30 s) and the connection indicator says so, instead of a request, and
// a console error, every few seconds.
let pollDelayMs = RUNS_POLL_MS;
async function pollRuns() {
  if (!document.hidden) {
    await runsList.refresh();
    serverReachable = runsList.reachable !== false;
    if (!serverReachable) {
      pollDelayMs = Math.min(30_000, pollDelayMs * 2);
      setConnection("unreachable");
    } else {
      if (pollDelayMs !== RUNS_POLL_MS && $("connection").dataset.state === "unreachable") {
        setConnection(ui.stream ? "retrying" : "closed");
      }
      pollDelayMs = RUNS_POLL_MS;
    }
  }
  setTimeout(pollRuns, pollDelayMs);
}
setTimeout(pollRuns, RUNS_POLL_MS);
