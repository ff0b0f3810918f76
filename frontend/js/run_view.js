// The run view: one run's header, player, layer overview, layer panels and charts.
//
// Its cost is bounded by the screen, not by the run: it opens at the newest rewire (or the step
// in the URL) from `/rewires`, the stored header from `GET /api/runs/{id}`, downsampled metrics,
// and `/view` answers at panel resolution for the panels on screen only. Live is the same path:
// the websocket in `topology=announce` mode tells when a rewire is complete, and the player
// (following live) moves to it, which fetches the visible panels at that rewire. The panels of
// attention projections get a per-head strip (heads.js) from `/topology` at the rewire they
// show; the loss's change across each rewire (`/rewire-response`) is charted under the loss.
import { api } from "./api.js";
import {
  drawChart, extraChart, extraGroups, metricAxes, metricView, responseOutliers, rewireResponseChart, runCharts,
  SMOOTHING_MAX,
} from "./charts.js";
import { HeadStrips } from "./heads.js";
import { inlineViews, MAX_WAIT_MS as INLINE_MAX_WAIT_MS } from "./inline_views.js";
import { InputPanel, MAX_GRID } from "./heatmap.js";
import { LayerOverview } from "./overview.js";
import { PanelSet } from "./panels.js";
import { holdUntil, holdUntilNear, purge } from "./plotly.js";
import { lastAtOrBefore, Player } from "./player.js";
import { loadSeries, MetricSeries, RewireSeries } from "./series.js";
import { SpeedupColumn, speedupChart } from "./speedup.js";
import { isActive, QUEUED, RUNNING } from "./statuses.js";
import { RunStream } from "./stream.js";
import { TopologySection } from "./topology.js";
import * as urls from "./urls.js";
import { ViewCache } from "./views.js";

const $ = (id) => document.getElementById(id);
const CHART_INTERVAL_MS = 250; // charts are cheap to skip; panels get the frame budget
const FIRST_CHARTS_WAIT_MS = 1500; // at most this long after opening, the charts wait for a panel
const INLINE_WAIT_MS = INLINE_MAX_WAIT_MS; // … inside a notebook page: for every view's panels
// A fast run completes hundreds of rewires a second: the page takes them in at most this often,
// so its work follows the screen, not the run's pace (and the stream never backs up behind it).
const LIVE_INTERVAL_MS = 100;
const LIVE_SHARE = 3; // a live batch waits at least 3× what the last one cost (≤ 1/3 of the thread)
const CHART_SHARE = 5; // likewise the charts: ≤ 1/5
const PREFETCH_AHEAD = 2; // rewires fetched ahead of the one shown while playing
const CHART_KEYS = ["loss", "accuracy", "density", "itop", "turnover"];
// The charts the toolbar (#chart-controls) restyles, with every extra metric chart; density and
// turnover are per rewire and keep the step axis, as the rewire-response chart does.
const METRIC_CHART_KEYS = new Set(["loss", "accuracy", "itop"]);
const CHART_OPTIONS_KEY = "sparsescope.chartOptions"; // localStorage: {smoothing, xaxis, log}
const X_AXIS_KEYS = ["step", "wall", "epoch"];
// Runs trained by the built-in loop (the worker's or the CLI's) minimise cross-entropy; a
// script's loss is whatever it logged.
const BUILT_IN_WRITERS = new Set(["worker", "cli"]);
const RESPONSE_REFRESH_MS = 2000; // a live run's rewire response is asked again at most this often
const MAX_RESPONSE_WINDOW = 10_000; // the server's bound on `window`

// The window of the rewire-response chart: the run's median rewire interval (the rewire steps,
// 0 = the initial masks, as the player holds them), so each rewire is compared over the steps
// since the one before with the steps until the next one.
export function responseWindow(steps) {
  const gaps = [];
  for (let i = 1; i < steps.length; i++) if (steps[i] > steps[i - 1]) gaps.push(steps[i] - steps[i - 1]);
  if (!gaps.length) return 1;
  gaps.sort((a, b) => a - b);
  return Math.max(1, Math.min(MAX_RESPONSE_WINDOW, gaps[(gaps.length - 1) >> 1]));
}

export class RunView {
  // palette() → the palette in use; onStatus(status), onConnection(state), onLabel(text);
  // canConnect() → whether a dropped stream may try to reconnect now.
  constructor({ palette, onStatus, onConnection, onLabel, canConnect = () => true }) {
    this.palette = palette;
    this.canConnect = canConnect; // false while the server is known to be unreachable
    this.onStatus = onStatus;
    this.onConnection = onConnection;
    this.onLabel = onLabel;
    this.run = null;
    this.layers = [];
    this.mode = "auto";
    this.pending = null; // {step, indices: Set}: topology announced for a rewire not yet complete
    this.completed = []; // rewires completed since the player last took them in (flushLive)
    this.liveTimer = 0;
    this.pinned = new Set();
    this.player = new Player({
      scrubber: $("scrubber"), back: $("step-back"), forward: $("step-forward"), play: $("play"),
      live: $("live"), position: $("position"), speed: $("speed"),
    }, { label: (state) => this.positionText(state) });
    this.player.subscribe((state) => this.moved(state));
    this.overview = new LayerOverview($("layer-overview"), {
      onJump: (index) => this.jump(index), onPin: (index) => this.togglePin(index),
    });
    // The layer table's speedup and structure columns, and their chart over the run.
    this.speedup = new SpeedupColumn(this.overview, { onSeries: () => this.chartsDirty() });
    $("mode").addEventListener("change", (event) => { this.mode = event.target.value; this.panels?.refresh(); });
    this.topology = new TopologySection($("topology"), { player: this.player, prefix: "topology" });
    this.chartOptions = loadChartOptions();
    this.bindChartControls();
    this.generation = 0;
    this.paints = 0; // panels painted since the page loaded (window.sparsescope.paints)
  }

  get id() {
    return this.run ? this.run.id : null;
  }

  // Open run `id` at `step` (null: the newest rewire). Resolves once its layout is on screen.
  async open(id, { step = null } = {}) {
    this.close();
    const generation = ++this.generation;
    const [run, rewires] = await Promise.all([api(urls.run(id)), api(urls.rewires(id))]);
    if (generation !== this.generation) return;
    this.run = run;
    this.openedAt = performance.now();
    this.firstPaint = false;
    this.firstPanelAt = null;
    // plotly.js (charts, the input view) loads only after the panels' first paint. Inside a
    // notebook cell (embedded: several views share one page's main thread) only once the
    // charts, under the panels, come near the cell's screen: the panels work without it.
    // Inside a notebook page every view waits for the others' panels too (inline_views.js).
    const ownPaint = new Promise((resolve) => { this.onFirstPaint = resolve; });
    const embedded = document.body.dataset.embedded === "true";
    const firstPaint = embedded ? inlineViews.allPainted(ownPaint) : ownPaint;
    const waitMs = embedded ? INLINE_WAIT_MS : FIRST_CHARTS_WAIT_MS;
    if (embedded) {
      holdUntilNear([$("charts")], firstPaint, waitMs);
    } else {
      holdUntil(firstPaint, waitMs);
    }
    this.views = new ViewCache(id);
    this.heads = new HeadStrips(id);
    this.response = null;
    this.responseRevision = 0;
    this.metrics = new MetricSeries();
    this.rewireSeries = new RewireSeries(null, rewires.layers);
    this.liveRewires = [];
    this.header(run);
    const painted = Promise.race([firstPaint, new Promise((done) => setTimeout(done, waitMs))]);
    this.speedup.open(id, painted);
    this.layout(rewires);
    const position = step === null ? null : Math.max(0, lastAtOrBefore(rewires.steps, step));
    const live = isActive(run.status) && step === null;
    this.player.followable = isActive(run.status);
    this.player.live = live;
    this.player.setSteps(rewires.steps, { position: position ?? rewires.steps.length - 1 });
    // The series (overview, input view, charts) are asked for once the panels are painted (or
    // FIRST_CHARTS_WAIT_MS passed): on a shared server (a notebook's inline views) the panels'
    // views are answered first.
    painted.then(() => (generation === this.generation ? loadSeries(id, this.layers) : null)).then((loaded) => {
      if (!loaded) return;
      const { metrics, rewires: series } = loaded;
      if (generation !== this.generation) return;
      // Live events that arrived meanwhile are already in the answers (or follow them).
      this.metrics = mergeLive(metrics, this.metrics);
      for (const event of this.liveRewires || []) series.push(event);
      this.liveRewires = null; // only needed until the answer is in: the series holds them now
      this.rewireSeries = series;
      this.addInputPanel(series.input);
      this.overview.update(series, this.player.step);
      this.speedup.loadSeries();
      this.chartsDirty();
      this.loadResponse(generation); // its metric is the run's loss, known now
    }).catch((error) => { $("run-error").textContent = `charts: ${error.message}`; });
    if (isActive(run.status) || rewires.last_seq < 0) {
      let opened = 0;
      this.stream = new RunStream(id, rewires.last_seq + 1, {
        onEvent: (event) => this.handle(event, generation),
        canConnect: this.canConnect,
        onState: (state) => {
          // Reconnected: the rewires stored meanwhile arrive as announcements, but a rewire
          // whose announcements straddled the drop is read back from the store.
          if (state === "open" && opened++ > 0) this.resync(generation);
          this.onConnection(state);
        },
      }).open();
    } else {
      this.onConnection("ended");
    }
    this.chartsDirty();
  }

  header(run) {
    $("run-empty").hidden = true;
    $("run-body").hidden = false;
    $("run-title").textContent = run.name;
    this.onLabel(run.name);
    $("run-error").textContent = run.error || "";
    this.planned = null;
    $("run-info").textContent = describeSettings(run);
    $("run-provenance").textContent = provenance(run.info);
    this.onStatus(run.status);
    this.explainWaiting(run.status, this.generation);
    this.planHeader(run, this.generation);
  }

  // A run the server has not started yet has no resolved `settings` (the worker stores them
  // when it builds the model), only its config: the header shows from the start the schedule
  // that config resolves to (POST /plan, the one resolver the worker uses), so it does not
  // change, and move the page, when the run starts or ends. Only the server's runs (queued,
  // or trained by its worker) have a run config to plan; a script's config is its own.
  async planHeader(run, generation) {
    const serverRun = run.status === QUEUED || (run.status === RUNNING && run.info?.writer === "worker");
    if (run.settings || !serverRun || !run.config?.task || !run.config?.method) return;
    try {
      const plan = await api(urls.plan(), { method: "POST", body: run.config });
      if (generation !== this.generation || this.run?.settings) return;
      this.planned = plannedSettings(run.config, plan);
      $("run-info").textContent = describeSettings(this.run, this.planned);
    } catch { /* the config's summary stays */ }
  }

  // A queued run says what it waits for: the runs the server is training now, ahead of it.
  async explainWaiting(status, generation) {
    const note = $("run-waiting");
    if (status !== QUEUED) { note.hidden = true; return; }
    note.hidden = false;
    note.textContent = "Queued: waiting for a free worker.";
    try {
      const runs = await api(urls.runs());
      if (generation !== this.generation || this.run?.status !== QUEUED) return;
      const running = runs.filter((run) => run.status === RUNNING);
      const ahead = runs.filter((run) => run.status === QUEUED && run.created_at < this.run.created_at);
      const names = (list) => list.map((run) => `${run.name} (${run.id})`).join(", ");
      note.textContent = "Queued: it starts when a worker is free" +
        (running.length ? `; training now: ${names(running)}` : "") +
        (ahead.length ? `; queued before it: ${names(ahead)}` : "") + ".";
    } catch { /* the generic line stays */ }
  }

  layout(rewires) {
    this.layers = rewires.layers.map((layer, index) => ({ index, ...layer }));
    this.panels?.clear();
    if (this.inputPanel) this.inputPanel.remove();
    this.inputPanel = null;
    const container = $("heatmaps");
    container.replaceChildren();
    $("pinned").replaceChildren();
    this.pinned.clear();
    this.panels = new PanelSet({
      views: () => this.views,
      target: () => ({ step: this.player.step, mode: this.mode, palette: this.palette() }),
      onPainted: (panel) => {
        this.painted();
        if (panel.layer.heads && panel.view) this.heads?.show(panel, panel.view.step);
      },
      onSettled: () => { if ($("position").dataset.pending && this.settled()) this.player.render(); },
    });
    for (const layer of this.layers) {
      const pin = document.createElement("button");
      pin.type = "button";
      pin.className = "small";
      pin.textContent = "Pin";
      pin.setAttribute("aria-label", `Pin panel ${layer.name}`);
      pin.addEventListener("click", () => this.togglePin(layer.index));
      this.panels.add(container, layer, { id: `heatmap-${layer.index}`, actions: [pin] }).pinButton = pin;
    }
    this.overview.layout(this.layers);
    this.topology.open([{ id: this.run.id, name: this.run.name, layers: this.layers }]);
    $("layer-count").textContent = `${this.layers.length} sparsified layer${this.layers.length === 1 ? "" : "s"}`;
  }

  // The player moved: visible panels, the input view, the overview, the charts' marker.
  moved(state) {
    if (!this.run) return;
    this.panels.refresh();
    this.panels.prefetch(this.player.upcoming(PREFETCH_AHEAD));
    this.drawInput(state.step);
    this.overview.update(this.rewireSeries, state.step);
    this.speedup.at(state.step);
    if (state.live) this.speedup.loadSeries({ live: true });
    this.chartsDirty();
    // The address names the rewire on screen, so a link (or a reload) opens it again; while
    // following live it names the run only. replaceState: no history entry, no hashchange.
    if (location.hash.startsWith(`#/run/${this.run.id}`)) {
      const hash = state.live || state.step === null ? `#/run/${this.run.id}` : `#/run/${this.run.id}?step=${state.step}`;
      if (location.hash !== hash) history.replaceState(null, "", hash);
    }
  }

  // Column sums of the first layer, drawn as the input it reads (image, kernel window, features).
  addInputPanel(input) {
    const first = this.layers[0];
    // The first layer's hover names image pixels by row and column (describeColumn).
    if (first && Array.isArray(input?.image_shape)) first.image_shape = input.image_shape;
    if (this.inputPanel || !first || first.shape[1] > MAX_GRID) return;
    this.inputPanel = new InputPanel($("heatmaps"), input, first);
    $("heatmaps").prepend(this.inputPanel.root);
    this.drawInput(this.player.step);
  }

  async drawInput(step) {
    const panel = this.inputPanel;
    if (!panel || step === null) return;
    const [rows, cols] = panel.grid();
    try {
      const view = await this.views.get(0, step, rows, cols);
      if (panel === this.inputPanel && this.player.step === step) await panel.draw(view);
    } catch (error) {
      panel.failedStep = step; // "drawing…" would never end: the panel says why instead
      panel.stats.textContent = `could not load: ${error.message}`;
    }
    if (panel === this.inputPanel && $("position").dataset.pending && this.settled()) this.player.render();
  }

  // Whether the input view, where it is on screen, shows `step` (the label waits for it too).
  // Not counted before the first paint: it is added once the series arrive, after that paint.
  inputSettled(step) {
    const panel = this.inputPanel;
    if (!panel || !this.firstPaint || panel.failedStep === step) return true;
    const box = panel.root.getBoundingClientRect();
    if (box.bottom <= 0 || box.top >= innerHeight) return true;
    return panel.plot.dataset.step === String(step);
  }

  painted() {
    this.paints += 1;
    this.firstPanelAt ??= performance.now();
    if ($("position").dataset.pending && this.settled()) this.player.render(); // drop "drawing…"
    if (!this.firstPaint && this.settled()) { // every visible panel shows the rewire
      this.firstPaint = true;
      this.onFirstPaint?.();
      if (this.chartTimer) { clearTimeout(this.chartTimer); this.chartTimer = 0; this.chartsDirty(); }
    }
  }

  positionText(state) {
    if (state.step === null) return this.run && isActive(this.run.status) ? "waiting for the first rewire" : "no rewires";
    const last = state.steps.length - 1;
    const tail = state.live ? " · live" : state.position === last && !state.followable ? " · newest" : "";
    // The label names the step the player is at; until the panels on screen show it, it says
    // so (and #position carries data-pending): it never claims a picture not yet drawn.
    const pending = this.markPending(state.step);
    return `step ${state.step} · rewire ${state.position} of ${last}${tail}${pending ? " · drawing…" : ""}`;
  }

  // Whether the panels near the screen have not painted `step` yet; kept on #position as
  // data-pending (the browser tests and anyone reading the page can tell).
  markPending(step) {
    const pending = step !== null && Boolean(this.panels) && !(this.panels.settled(step) && this.inputSettled(step));
    const position = $("position");
    if (pending) position.dataset.pending = "true";
    else delete position.dataset.pending;
    return pending;
  }

  // One websocket message of the followed run.
  handle(event, generation) {
    if (generation !== this.generation) return;
    switch (event.type) {
      case "topology": this.announced(event); break;
      case "metrics":
      case "eval":
        this.complete(event.step);
        this.metrics.push(event);
        this.chartsDirty();
        this.responseDirty(generation);
        break;
      case "rewire":
        if (this.liveRewires) this.liveRewires.push(event);
        this.rewireSeries.push(event);
        this.liveDirty();
        this.chartsDirty();
        break;
      case "meta":
        // Who writes the run is stored before its meta event: a header read while it was
        // queued (or whose `running` status came before the stream) learns it here.
        if (!this.run.info?.writer) this.refreshHeader(generation);
        // A queued run's first layout: lay the panels out from the stored answer.
        api(urls.rewires(this.run.id)).then((rewires) => {
          if (generation !== this.generation) return;
          this.layout(rewires);
          this.rewireSeries = new RewireSeries(null, this.layers);
          // Rewires announced while this answer was on its way are kept.
          this.flushLive();
          this.player.setSteps(mergeSteps(this.player.steps, rewires.steps));
          // The input view too: its geometry is in this meta event (layout() removed any).
          this.addInputPanel({ image_shape: Array.isArray(event.image_shape) ? event.image_shape : null });
        }).catch(() => undefined);
        break;
      case "status":
        this.run = { ...this.run, status: event.status, error: event.error || this.run.error };
        this.onStatus(event.status);
        this.explainWaiting(event.status, generation);
        $("run-error").textContent = this.run.error || "";
        if (event.status === RUNNING) this.refreshHeader(generation);
        break;
      case "end":
        this.complete(Infinity);
        this.flushLive();
        this.player.setFollowable(false);
        this.refreshHeader(generation);
        this.loadResponse(generation); // the last rewires' windows are complete now
        break;
      case "error":
        $("run-error").textContent = event.error || "the stream was refused";
        break;
      case "skipped":
        // The server skipped this slow page ahead: the rewires (and their series) it did not
        // send are read back from the store, so the scrubber still knows every rewire.
        this.resync(generation);
        break;
      default: break;
    }
  }

  // A topology header: the rewire of `event.step` is complete once every layer announced it,
  // or a message of a later step arrives.
  announced(event) {
    if (this.pending && event.step > this.pending.step) this.complete(event.step);
    if (!this.pending) this.pending = { step: event.step, indices: new Set() };
    this.pending.indices.add(event.index);
    if (this.pending.indices.size >= this.layers.length) this.complete(Infinity);
  }

  complete(beforeStep) {
    const pending = this.pending;
    if (!pending || pending.step >= beforeStep) return;
    this.pending = null;
    const steps = this.player.steps;
    const newest = this.completed.length ? this.completed[this.completed.length - 1] : steps[steps.length - 1];
    if (newest !== undefined && newest >= pending.step) return;
    this.completed.push(pending.step);
    this.liveDirty();
  }

  // Take the rewires completed meanwhile in, at most every LIVE_INTERVAL_MS: one player move
  // (one fetch of the visible panels, one overview redraw) for however many arrived.
  liveDirty() {
    if (this.liveTimer) return;
    const interval = Math.max(LIVE_INTERVAL_MS, LIVE_SHARE * (this.liveCost || 0));
    const wait = Math.max(0, interval - (performance.now() - (this.lastLive || 0)));
    this.liveTimer = setTimeout(() => this.flushLive(), wait);
  }

  flushLive() {
    clearTimeout(this.liveTimer);
    this.liveTimer = 0;
    const started = performance.now();
    this.lastLive = started;
    try {
      this.takeLive();
    } finally {
      this.liveCost = performance.now() - started;
    }
  }

  takeLive() {
    if (!this.run) return;
    const completed = this.completed;
    this.completed = [];
    const steps = this.player.steps;
    const last = steps.length ? steps[steps.length - 1] : -Infinity;
    const fresh = completed.filter((step) => step > last);
    if (fresh.length) this.player.setSteps([...steps, ...fresh]); // moved() redraws the overview
    else this.overview.update(this.rewireSeries, this.player.step);
  }

  async resync(generation) {
    try {
      const [rewires, series] = await Promise.all([
        api(urls.rewires(this.run.id)), loadSeries(this.run.id, this.layers)]);
      if (generation !== this.generation) return;
      this.flushLive();
      const merged = mergeSteps(this.player.steps, rewires.steps);
      if (merged.length !== this.player.steps.length) this.player.setSteps(merged);
      this.metrics = mergeLive(series.metrics, this.metrics);
      this.rewireSeries = series.rewires;
      this.chartsDirty();
      this.responseDirty(generation);
    } catch { /* the next announcement or resync fills the gap */ }
  }

  // The metric whose rewire response is charted: the running loss, else a logged train loss.
  responseMetric() {
    if (this.metrics.get("metrics", "loss")) return "loss";
    return this.metrics.get("metrics", "train_loss") ? "train_loss" : "loss";
  }

  async loadResponse(generation) {
    // Not while the server is known to be unreachable: the stream's reconnect asks again.
    if (!this.run || generation !== this.generation || !this.canConnect()) return;
    this.responseAt = performance.now();
    const params = { window: responseWindow(this.player.steps), metric: this.responseMetric() };
    try {
      const answer = await api(urls.rewireResponse(this.run.id, params));
      if (generation !== this.generation) return;
      this.response = answer;
      this.responseRevision += 1;
      this.describeResponse();
      this.chartsDirty();
    } catch (error) {
      if (generation === this.generation) $("rewire-response-caption").textContent = `rewire response: ${error.message}`;
    }
  }

  // New metrics while live: the response is asked again, at most every RESPONSE_REFRESH_MS.
  responseDirty(generation) {
    if (this.responseTimer || !this.run || !this.canConnect()) return;
    const wait = Math.max(0, RESPONSE_REFRESH_MS - (performance.now() - (this.responseAt || 0)));
    this.responseTimer = setTimeout(() => { this.responseTimer = 0; this.loadResponse(generation); }, wait);
  }

  describeResponse() {
    const answer = this.response;
    const caption = $("rewire-response-caption");
    if (!answer) { caption.textContent = ""; return; }
    const rows = answer.rewires;
    const outliers = responseOutliers(rows.map((row) => row.change)).filter(Boolean).length;
    const span = `${answer.window} step${answer.window === 1 ? "" : "s"}`;
    caption.dataset.window = String(answer.window);
    caption.dataset.rewires = String(rows.length);
    caption.dataset.outliers = String(outliers);
    caption.textContent = rows.length
      ? `Mean ${answer.metric} over the ${span} after each rewire minus the ${span} before it ` +
        `(window = the median rewire interval) · ${rows.length} rewire${rows.length === 1 ? "" : "s"} ` +
        `with a full window · ${outliers} outlier${outliers === 1 ? "" : "s"} (|change − median| > 3·MAD)`
      : `No rewire has ${span} of logged ${answer.metric} on both sides yet.`;
  }

  async refreshHeader(generation) {
    try {
      const run = await api(urls.run(this.run.id));
      if (generation !== this.generation) return;
      this.run = run;
      $("run-info").textContent = describeSettings(run, this.planned);
      $("run-provenance").textContent = provenance(run.info);
      $("run-error").textContent = run.error || ""; // the stored reason, with the stored status
      this.onStatus(run.status);
    } catch { /* the stream's status is shown meanwhile */ }
  }

  jump(index) {
    const panel = this.panels.panels[index];
    if (!panel) return;
    panel.root.scrollIntoView({ block: "start" });
    this.overview.highlight(index);
    for (const other of this.panels.panels) other.root.classList.toggle("current", other === panel);
    panel.plot.focus?.();
  }

  togglePin(index) {
    const panel = this.panels.panels[index];
    if (!panel) return;
    const pinned = !this.pinned.has(index);
    if (pinned) {
      this.pinned.add(index);
      $("pinned").append(panel.root);
    } else {
      this.pinned.delete(index);
      // Back to its place among the unpinned panels, in layer order.
      const after = this.panels.panels.slice(index + 1).find((other) => !this.pinned.has(other.layer.index));
      $("heatmaps").insertBefore(panel.root, after ? after.root : null);
    }
    panel.pinButton.textContent = pinned ? "Unpin" : "Pin";
    panel.pinButton.setAttribute("aria-pressed", String(pinned));
    this.overview.setPinned(index, pinned);
    $("pinned").hidden = this.pinned.size === 0;
  }

  chartsDirty() {
    if (this.chartTimer) return;
    // The first draw waits until the visible panels are painted (the charts are under the panels, and a
    // ResNet run's five first chart draws held the main thread ~0.5 s before the heatmaps), or
    // FIRST_CHARTS_WAIT_MS for a run whose panels have nothing to paint.
    const sinceOpen = performance.now() - (this.openedAt || 0);
    const waitForPanels = !this.firstPaint && this.layers.length > 0 && sinceOpen < FIRST_CHARTS_WAIT_MS;
    // Paced by their own cost too: a live run's charts take at most 1/CHART_SHARE of the main
    // thread, however slow the machine (at a fixed 250 ms, a busy 2-core machine spent the
    // whole thread on charts and the page answered clicks seconds late).
    const interval = Math.max(CHART_INTERVAL_MS, CHART_SHARE * (this.chartsCost || 0));
    const wait = waitForPanels ? FIRST_CHARTS_WAIT_MS - sinceOpen
      : Math.max(0, interval - (performance.now() - (this.lastCharts || 0)));
    this.chartTimer = setTimeout(() => {
      this.chartTimer = 0;
      this.lastCharts = performance.now();
      this.drawCharts();
      this.chartsCost = performance.now() - this.lastCharts;
    }, wait);
  }

  // The chart toolbar: smoothing, x axis and log scale of every metric chart, kept in localStorage.
  bindChartControls() {
    const smoothing = $("chart-smoothing");
    const xaxis = $("chart-xaxis");
    const log = $("chart-log");
    smoothing.max = String(SMOOTHING_MAX);
    smoothing.value = String(this.chartOptions.smoothing);
    $("chart-smoothing-value").textContent = this.chartOptions.smoothing.toFixed(2);
    xaxis.value = this.chartOptions.xaxis;
    log.checked = this.chartOptions.log;
    const changed = () => {
      saveChartOptions(this.chartOptions);
      this.chartsDirty();
    };
    smoothing.addEventListener("input", () => {
      this.chartOptions.smoothing = clampSmoothing(Number(smoothing.value));
      $("chart-smoothing-value").textContent = this.chartOptions.smoothing.toFixed(2);
      changed();
    });
    xaxis.addEventListener("change", () => { this.chartOptions.xaxis = xaxis.value; changed(); });
    log.addEventListener("change", () => { this.chartOptions.log = log.checked; changed(); });
  }

  // The x axis the metric charts use: the one chosen when this run has it, else step. The
  // choices this run lacks are disabled, their title says why.
  chartAxis() {
    const axes = metricAxes(this.metrics, this.run);
    const select = $("chart-xaxis");
    for (const option of select.options) {
      const axis = axes[option.value];
      option.disabled = Boolean(axis.why);
      if (axis.why) option.title = axis.why;
      else option.removeAttribute("title");
    }
    const key = axes[this.chartOptions.xaxis] && !axes[this.chartOptions.xaxis].why ? this.chartOptions.xaxis : "step";
    if (select.value !== key) select.value = key;
    select.dataset.shown = key;
    return { key, ...axes[key] };
  }

  drawCharts() {
    if (!this.run || $("view-run").hidden) return;
    const palette = this.palette();
    const lossTitle = BUILT_IN_WRITERS.has(this.run.info?.writer ?? "worker") ? "loss (cross-entropy)" : "loss";
    let charts = null; // built only when a chart's data changed, not when only the marker moved
    const built = (key) => (charts ||= runCharts(this.metrics, this.rewireSeries, palette, { lossTitle }))[key];
    const marker = this.player.live ? null : this.player.step;
    const revision = `${this.run.id}-${this.metrics.revision}-${this.rewireSeries.revision}-${this.rewireSeries.step.length}-${palette.label}`;
    // The metric charts: the toolbar's choices are part of what is drawn, and the marker moves
    // to the scrubber's step on their x axis.
    const axis = this.chartAxis();
    const view = { smoothing: this.chartOptions.smoothing, axis, log: this.chartOptions.log };
    const viewRevision = `${revision}-${axis.key}-${view.smoothing}-${view.log}`;
    const markerX = axis.map && marker !== null ? axis.map(marker) : marker;
    $("chart-note").textContent = marker !== null && markerX === null
      ? `The scrubber's step ${marker} has no ${axis.title}: the metric charts show no marker.` : "";
    for (const key of CHART_KEYS) {
      if (METRIC_CHART_KEYS.has(key)) {
        drawChart($(`chart-${key}`), () => metricView(built(key), view), markerX, viewRevision);
      } else {
        drawChart($(`chart-${key}`), () => built(key), marker, revision);
      }
    }
    drawChart($("chart-rewire-response"), () => rewireResponseChart(this.response, palette), marker,
              `${this.run.id}-${this.responseRevision}-${palette.label}`);
    drawChart($("chart-speedup"), () => speedupChart(this.speedup.series), marker,
              `${this.run.id}-${this.speedup.seriesRevision}`);
    // Every other numeric metric the run logs, one chart per name prefix.
    for (const group of extraGroups(this.metrics)) {
      drawChart(this.extraDiv(group.group), () => metricView(extraChart(this.metrics, group), view), markerX,
                viewRevision);
    }
  }

  extraDiv(group) {
    this.extraCharts ||= new Map();
    let div = this.extraCharts.get(group);
    if (!div) {
      div = document.createElement("div");
      div.className = "chart chart-extra";
      div.id = `chart-extra-${this.extraCharts.size}`;
      div.dataset.group = group;
      div.setAttribute("role", "img");
      div.setAttribute("aria-label", `${group} metrics`);
      $("charts").append(div);
      this.extraCharts.set(group, div);
    }
    return div;
  }

  // True once every visible panel shows the player's rewire.
  settled() {
    const step = this.player.step;
    return Boolean(this.panels) && step !== null && this.panels.settled(step) && this.inputSettled(step);
  }

  close() {
    this.generation += 1;
    if (this.stream) this.stream.close();
    this.stream = null;
    this.player.pause();
    this.speedup.close();
    this.panels?.clear();
    this.panels = null;
    this.topology.close();
    if (this.inputPanel) this.inputPanel.remove();
    this.inputPanel = null;
    if (this.views) this.views.close();
    this.views = null;
    this.heads = null;
    this.response = null;
    clearTimeout(this.responseTimer);
    this.responseTimer = 0;
    const caption = $("rewire-response-caption");
    caption.textContent = "";
    for (const key of ["window", "rewires", "outliers"]) delete caption.dataset[key];
    clearTimeout(this.chartTimer);
    this.chartTimer = 0;
    clearTimeout(this.liveTimer);
    this.liveTimer = 0;
    this.completed = [];
    this.pending = null;
    this.run = null;
    this.player.steps = [];
    this.player.position = -1;
    this.player.live = false;
    // A new run starts its charts from scratch (no axis ranges carried over from the last one).
    for (const chart of document.querySelectorAll("#charts .chart")) purge(chart);
    for (const div of this.extraCharts?.values() || []) div.remove();
    this.extraCharts = new Map();
  }
}

function clampSmoothing(value) {
  return Number.isFinite(value) ? Math.min(SMOOTHING_MAX, Math.max(0, value)) : 0;
}

// The chart toolbar's choices as last left (defaults: raw, step, linear).
function loadChartOptions() {
  let stored = {};
  try {
    stored = JSON.parse(localStorage.getItem(CHART_OPTIONS_KEY) || "{}") || {};
  } catch { /* unreadable: the defaults */ }
  return {
    smoothing: clampSmoothing(Number(stored.smoothing ?? 0)),
    xaxis: X_AXIS_KEYS.includes(stored.xaxis) ? stored.xaxis : "step",
    log: stored.log === true,
  };
}

function saveChartOptions(options) {
  try {
    localStorage.setItem(CHART_OPTIONS_KEY, JSON.stringify(options));
  } catch { /* storage full or denied: the choice lasts until the page closes */ }
}

// Every step of either ascending list, once, ascending.
function mergeSteps(known, stored) {
  const seen = new Set(known);
  return [...known, ...stored.filter((step) => !seen.has(step))].sort((a, b) => a - b);
}

// Live events that arrived before the downsampled answer: appended where they are newer.
function mergeLive(answer, live) {
  for (const [type, fields] of Object.entries(live.types)) {
    for (const [field, series] of Object.entries(fields)) {
      const target = (answer.types[type] ||= {});
      const into = (target[field] ||= new series.constructor());
      series.step.forEach((step, i) => into.push(step, series.last[i]));
    }
  }
  answer.revision = live.revision + 1;
  return answer;
}

// The settings a queued run will use, as the worker will record them (`settings`), from its
// config and the server's plan of it.
export function plannedSettings(config, plan) {
  const hidden = Array.isArray(config.hidden) ? config.hidden.join(", ") : "";
  return {
    task: config.task, model: `${config.model} [${hidden}]`, method: plan.method, density: plan.density,
    distribution: plan.distribution, interval_steps: plan.interval_steps, schedule: plan.schedule,
    drop_fraction: plan.drop_fraction, end_fraction: plan.end_fraction, total_steps: plan.total_steps,
  };
}

// The settings the run used (`settings`, every default resolved), else those `planned` for it
// (plannedSettings), else its stored config.
export function describeSettings(run, planned = null) {
  const settings = run.settings || planned;
  const config = run.config || {};
  const parts = [];
  if (settings && typeof settings === "object") {
    const head = [settings.task, settings.model].filter(Boolean).join(" · ");
    if (head) parts.push(head);
    if (settings.method) parts.push(`${settings.method} · density ${settings.density} (${settings.distribution ?? "–"})`);
    if (settings.interval_steps !== undefined && settings.interval_steps !== null) {
      parts.push(`rewire every ${settings.interval_steps} steps (${settings.schedule ?? "–"}, ` +
                 `drop ${settings.drop_fraction ?? "–"}, end ${settings.end_fraction ?? "–"})`);
    }
    if (settings.total_steps !== undefined && settings.total_steps !== null) parts.push(`${settings.total_steps} steps`);
  } else if (config.task || config.method) {
    const hidden = Array.isArray(config.hidden) ? ` [${config.hidden.join(", ")}]` : "";
    parts.push(`${config.task} · ${config.model ?? ""}${hidden} · ${config.method} · density ${config.density}`);
    if (config.interval_steps !== undefined && config.interval_steps !== null) {
      parts.push(`rewire every ${config.interval_steps} steps`);
    }
  }
  parts.push(run.id);
  return parts.join(" · ");
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
  const layout = info.distributed;
  if (layout && typeof layout === "object" && Number.isInteger(layout.world_size)) {
    parts.push(`DDP: ${layout.world_size} ranks (${String(layout.backend ?? "?")}), recorded by rank ${layout.rank ?? 0}`);
  }
  return parts.join(" · ");
}
