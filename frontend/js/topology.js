// The topology section: degree distributions (with the Erdős–Rényi expectation), degree over
// time, dead units, connection ages, survival of grown cohorts and mask distance, for one layer
// or as an all-layers summary, at the rewire the player shows — in the run view (one run) and
// in Compare (one trace per run, overlaid, each run in its own colour; fan-in over time, a
// heatmap, as one heatmap per run stacked on a shared step axis).
//
// It follows the player with `player.subscribe` (docs/dashboard.md) and asks the server only for
// what it draws: `GET /topology` at the step on screen, `/topology/series` once per layer (again
// while a live run grows), `/topology/model` for the summary. Answers are kept in a small LRU,
// so scrubbing back costs nothing; at most one refresh is in flight, the newest position wins;
// off screen it redraws only once the player is still (or every few seconds while live).
// One run (the run view) also gets the layer's churn (churn.js: `GET /churn`), drawn with the rest.
import { api } from "./api.js";
import { chartBase, chartTitle, MARGINS, PLOT_CONFIG, runColour, runStyle, stepMarker } from "./chart_style.js";
import { ChurnPart } from "./churn.js";
import { purge, react } from "./plotly.js";
import { plain } from "./text.js";
import * as urls from "./urls.js";

const KEEP_ANSWERS = 256; // per section: enough for scrubbing back and forth over a long run
const SERIES_POINTS = 400; // a layer's series over time: at most this many rewires
const SERIES_REFRESH_MS = 2000; // a live run's series is fetched again at most this often
const ON_SCREEN_MARGIN_PX = 200; // drawn a little before it scrolls in
const OFF_SCREEN_IDLE_MS = 1000; // off screen, the player still this long: catch up
const OFF_SCREEN_MAX_WAIT_MS = 5000; // … or, following live, this long after the first missed one
const BASE = chartBase(MARGINS.topology, -0.25);
const CHARTS = [
  ["fan-in", "Fan-in distribution"], ["fan-out", "Fan-out distribution"],
  ["age", "Age of active connections"], ["survival", "Survival of grown cohorts"],
  ["degree-time", "Fan-in over time"], ["degree-mean", "Fan-in mean and max over time"],
  ["dead", "Dead units over time"], ["distance", "Mask distance over time"],
  ["repruned", "Grown, then pruned at the next rewire"],
];
const SUMMARY_CHARTS = [["summary-dead", "Dead units per layer"], ["summary-degree", "Mean fan-in per layer"]];
const MULTIPLE_HEIGHT_PX = 170; // fan-in over time, several runs: the height of each run's heatmap
const MULTIPLE_GAP = 0.1; // … and the gap between two of them (a share of the plot's height)

function layout(title, xTitle, yTitle, extra = {}) {
  return { ...BASE, title: chartTitle(title),
           xaxis: { title: { text: xTitle, standoff: 2 }, zeroline: false, automargin: true },
           yaxis: { title: { text: yTitle }, automargin: true }, ...extra };
}

// Expected [degree, units] of `units` units with Binomial(trials, density) connections each: a
// uniformly random mask with the same active count (SET's reference; ratio recurrence, no overflow).
export function erdosRenyi(units, trials, density) {
  if (!(units > 0 && trials > 0) || !(density > 0 && density < 1)) return [[], []];
  const degrees = [];
  const expected = [];
  let logP = trials * Math.log1p(-density); // log P(degree 0)
  const odds = Math.log(density) - Math.log1p(-density);
  for (let k = 0; k <= trials; k += 1) {
    const value = units * Math.exp(logP);
    if (value >= 1e-3) { degrees.push(k); expected.push(value); }
    logP += Math.log(trials - k) - Math.log(k + 1) + odds;
  }
  return [degrees, expected];
}

const pairsX = (pairs) => pairs.map((pair) => pair[0]);
const pairsY = (pairs) => pairs.map((pair) => pair[1]);
const fmt = (value, digits = 3) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));

export class TopologySection {
  // root: an empty element; prefix: the ids of its parts (`${prefix}-layer`, `${prefix}-fan-in`, …).
  constructor(root, { player, prefix }) {
    this.root = root;
    this.prefix = prefix;
    this.runs = [];
    this.draws = []; // the current refresh's chart draws (plotly.js may still be loading)
    this.layer = "0";
    this.step = null;
    this.live = false;
    this.answers = new Map();
    this.series = new Map(); // `${run}|${layer}` -> { body, fetched, lastStep }
    this.generation = 0;
    this.busy = false;
    this.again = false;
    this.build();
    // Cost follows the screen: off screen the section does not redraw while the player moves (its
    // nine charts took ~1 s of the page's main thread per scrub of a ResNet run); it catches up
    // once the player has been still for OFF_SCREEN_IDLE_MS (while following live, at the latest
    // OFF_SCREEN_MAX_WAIT_MS after the first position it missed: a live run never stops moving),
    // or at once on sight.
    // The observer says when it scrolls into view; whether it is on screen now is measured at
    // each refresh (an observer's last report can predate the panels laid out above it).
    this.pending = false;
    this.pendingSince = 0;
    this.idleTimer = 0;
    this.near = false; // the observer's last word; measured again only when it says "near"
    this.watch = new IntersectionObserver((entries) => {
      for (const entry of entries) this.near = entry.isIntersecting;
      if (this.pending && this.near) this.refresh();
    }, { rootMargin: `${ON_SCREEN_MARGIN_PX}px` });
    this.watch.observe(root);
    this.unsubscribe = player.subscribe((state) => {
      this.step = state.step;
      this.live = state.live;
      this.lastStep = state.steps.length ? state.steps[state.steps.length - 1] : null;
      this.refresh();
    });
  }

  build() {
    const p = this.prefix;
    this.root.classList.add("topology");
    const heading = document.createElement("h3");
    heading.textContent = "Topology";
    const controls = document.createElement("div");
    controls.className = "topology-controls";
    this.select = document.createElement("select");
    this.select.id = `${p}-layer`;
    this.select.setAttribute("aria-label", "Topology of layer");
    this.select.addEventListener("change", () => { this.layer = this.select.value; this.refresh(); });
    this.scale = document.createElement("select");
    this.scale.id = `${p}-scale`;
    this.scale.setAttribute("aria-label", "Degree axes");
    this.scale.append(new Option("linear", "linear"), new Option("log–log", "log"));
    this.scale.addEventListener("change", () => this.refresh());
    const layerLabel = document.createElement("label");
    layerLabel.append("Layer ", this.select);
    const scaleLabel = document.createElement("label");
    scaleLabel.append("Degree axes ", this.scale);
    controls.append(layerLabel, scaleLabel);
    this.stats = document.createElement("div");
    this.stats.id = `${p}-stats`;
    this.stats.className = "topology-stats";
    this.error = document.createElement("p");
    this.error.className = "error-text";
    this.summary = document.createElement("div");
    this.summary.id = `${p}-summary`;
    this.summary.className = "topology-summary";
    this.charts = document.createElement("div");
    this.charts.className = "charts";
    this.summaryCharts = document.createElement("div");
    this.summaryCharts.className = "charts";
    this.churn = new ChurnPart(p, { onChange: () => this.refresh() });
    this.churn.root.hidden = true; // one run, one layer: drawLayer shows it
    const chart = ([key, title], into) => {
      const div = document.createElement("div");
      div.className = "chart";
      div.id = `${p}-${key}`;
      div.setAttribute("role", "img");
      div.setAttribute("aria-label", title);
      into.append(div);
    };
    CHARTS.forEach((entry) => chart(entry, this.charts));
    SUMMARY_CHARTS.forEach((entry) => chart(entry, this.summaryCharts));
    this.root.replaceChildren(heading, controls, this.error, this.stats, this.charts, this.churn.root, this.summary,
                             this.summaryCharts);
  }

  // runs: [{ id, name, layers: [{ name, shape, ... }], colour }]; the first run's layers fill the
  // picker. With several runs each is drawn in its `colour` (by default its position's colour).
  open(runs) {
    runs = runs.map((run, position) => ({ colour: runColour(position), ...run }));
    const key = runs.map((run) => `${run.id}:${run.layers.length}`).join(",");
    if (key === this.key) { this.runs = runs; this.refresh(); return; } // the same layout again
    this.key = key;
    this.runs = runs;
    this.answers.clear();
    this.series.clear();
    this.churn.clear();
    const layers = runs.length ? runs[0].layers : [];
    const options = [new Option("all layers (summary)", "all"),
      ...layers.map((layer, index) => new Option(`${index}: ${layer.name}`, String(index)))];
    this.select.replaceChildren(...options);
    if (this.layer !== "all" && Number(this.layer) >= layers.length) this.layer = "0";
    this.select.value = this.layer;
    delete this.root.dataset.step;
    this.refresh();
  }

  close() {
    this.generation += 1;
    this.pending = false;
    clearTimeout(this.idleTimer);
    this.idleTimer = 0;
    this.key = "";
    this.runs = [];
    this.answers.clear();
    this.series.clear();
    this.churn.clear();
    delete this.root.dataset.step;
    for (const div of this.root.querySelectorAll(".chart")) purge(div);
  }

  async get(path) {
    const hit = this.answers.get(path);
    if (hit) { this.answers.delete(path); this.answers.set(path, hit); return hit; }
    const body = await api(path);
    this.answers.set(path, body);
    while (this.answers.size > KEEP_ANSWERS) this.answers.delete(this.answers.keys().next().value);
    return body;
  }

  // A layer's series, fetched once and again when a live run has grown past it.
  async seriesOf(run, layer) {
    const key = `${run.id}|${layer}`;
    const known = this.series.get(key);
    const now = performance.now();
    const stale = known && this.step !== null && this.step > known.lastStep && now - known.fetched > SERIES_REFRESH_MS;
    if (known && !stale) return known.body;
    const body = await api(urls.topologySeries(run.id, { layer, points: SERIES_POINTS }));
    this.series.set(key, { body, fetched: now, lastStep: body.step.length ? body.step[body.step.length - 1] : -1 });
    return body;
  }

  onScreen() {
    // Far off screen by the observer's word: no layout is forced to check (opening a run asks
    // this at every player move, before its panels are even laid out). Said to be near, it is
    // measured: panels laid out above since may have pushed it away.
    if (!this.near) return false;
    const box = this.root.getBoundingClientRect();
    if (!box.width && !box.height) return false; // hidden (another view, or not laid out)
    return box.bottom >= -ON_SCREEN_MARGIN_PX && box.top <= window.innerHeight + ON_SCREEN_MARGIN_PX;
  }

  // Off screen: draw once the player is still (see the constructor); hidden: only on sight.
  later() {
    const now = performance.now();
    if (!this.pending) this.pendingSince = now;
    this.pending = true;
    clearTimeout(this.idleTimer);
    this.idleTimer = 0;
    // Hidden (another view) or inside a notebook cell (several views on one page and one
    // server): only on sight. Asked of the DOM, not of the layout (no forced layout here).
    if (this.root.closest("[hidden]") || document.body.dataset.embedded === "true") return;
    const wait = this.live ? Math.min(OFF_SCREEN_IDLE_MS, Math.max(0, OFF_SCREEN_MAX_WAIT_MS - (now - this.pendingSince)))
      : OFF_SCREEN_IDLE_MS; // scrubbing: only once the scrubbing stops
    this.idleTimer = setTimeout(() => { this.idleTimer = 0; if (this.pending) this.refresh(true); }, wait);
  }

  async refresh(offScreenToo = false) {
    if (!offScreenToo && !this.onScreen()) { this.later(); return; }
    this.pending = false;
    clearTimeout(this.idleTimer);
    this.idleTimer = 0;
    if (this.busy) { this.again = true; return; }
    if (!this.runs.length || this.step === null) return;
    this.busy = true;
    const generation = this.generation;
    const { step, layer } = this;
    try {
      this.draws = [];
      if (layer === "all") await this.drawSummary(step, generation);
      else await this.drawLayer(Number(layer), step, generation);
      await Promise.all(this.draws); // the step is marked shown once the charts hold it
      if (generation === this.generation) {
        this.error.textContent = "";
        this.root.dataset.step = String(step);
        this.root.dataset.layer = layer;
      }
    } catch (error) {
      if (generation === this.generation) this.error.textContent = `topology: ${error.message}`;
    } finally {
      this.busy = false;
      if (this.again) { this.again = false; this.refresh(); }
    }
  }

  async drawLayer(index, step, generation) {
    const runs = this.runs.filter((run) => run.layers[index]);
    // Churn: one run only (Compare has its mask overlap instead). Its failure is said in its own
    // place; the rest of the section is drawn all the same.
    const churnShown = this.runs.length === 1 && runs.length === 1;
    this.churn.root.hidden = !churnShown; // shown before it is measured for its map's pixels
    const churn = churnShown
      ? this.churn.load(runs[0].id, { index, shape: runs[0].layers[index].shape }, step)
        .then((body) => ({ body }), (error) => ({ error }))
      : null;
    const [answers, series, churned] = await Promise.all([
      Promise.all(runs.map((run) => this.get(urls.topology(run.id, { layer: index, step })))),
      Promise.all(runs.map((run) => this.seriesOf(run, index))),
      churn,
    ]);
    if (generation !== this.generation) return;
    this.summary.hidden = true;
    this.summaryCharts.hidden = true;
    this.charts.hidden = false;
    if (churned?.error) this.churn.fail(churned.error, step);
    else if (churned) {
      const draws = this.churn.draw(churned.body, step, this.lastStep);
      this.draws.push(...draws);
      Promise.all(draws).then(() => { if (generation === this.generation) this.churn.root.dataset.step = String(step); });
    }
    const many = this.runs.length > 1; // compared (even where only one of them has this layer)
    const label = (run, what) => plain(many ? `${run.name}: ${what}` : what);
    // Several runs: each run's traces in its colour and legend group (one run: Plotly's colours).
    const own = (run, trace, dash = null) => (many ? runStyle(run, trace, dash) : trace);
    const log = this.scale.value === "log";
    const axes = log ? { xaxis: { type: "log", title: { text: "degree" } }, yaxis: { type: "log", title: { text: "units" } } } : {};
    const degreeChart = (key, side) => {
      const traces = [];
      answers.forEach((answer, i) => {
        const pairs = answer[side];
        const [rows, cols] = answer.shape;
        const [units, trials] = side === "fan_in" ? [rows, cols] : [cols, rows];
        traces.push(own(runs[i], { type: "scatter", mode: "lines+markers", name: label(runs[i], "measured"),
                                   x: pairsX(pairs), y: pairsY(pairs), marker: { size: 4 } }));
        const [x, y] = erdosRenyi(units, trials, answer.active / (rows * cols));
        traces.push(own(runs[i], { type: "scatter", mode: "lines", name: label(runs[i], "Erdős–Rényi"), x, y,
                                   line: { dash: "dash", width: 1 } }));
      });
      const title = key === "fan-in" ? "Fan-in (inputs per output unit)" : "Fan-out (outputs per input unit)";
      this.plot(key, traces, layout(title, "degree", "units", axes));
    };
    degreeChart("fan-in", "fan_in");
    degreeChart("fan-out", "fan_out");
    this.plot("age", answers.map((answer, i) => own(runs[i], { type: "bar", name: label(runs[i], "connections"),
                                                               opacity: many ? 0.6 : 1,
                                                               x: pairsX(answer.age), y: pairsY(answer.age) })),
              layout("Age of active connections", "rewires since it last became active", "connections",
                     { barmode: "overlay" }));
    this.plot("survival", answers.map((answer, i) => own(runs[i], {
      type: "scatter", mode: "lines+markers", name: label(runs[i], "still active"),
      x: pairsX(answer.survival), y: pairsY(answer.survival), marker: { size: 3 } })),
              layout("Survival of grown cohorts", "rewires ago grown", "share active now",
                     { yaxis: { title: { text: "share active now" }, range: [0, 1.02] } }));
    this.plot("repruned", series.map((body, i) => own(runs[i], {
      type: "scatter", mode: "lines", name: label(runs[i], "re-pruned"),
      x: pairsX(body.repruned_next), y: pairsY(body.repruned_next) })),
              layout("Grown, then pruned at the next rewire", "rewire", "share of its growth",
                     { yaxis: { title: { text: "share of its growth" }, range: [0, 1.02] } }));
    // Several runs: the width of the section, each run's heatmap a strip of it.
    document.getElementById(`${this.prefix}-degree-time`)?.classList.toggle("chart-wide", many);
    if (many) this.fanInOverTime(runs, series, step);
    else {
      const first = series[0];
      this.plot("degree-time", first ? [{
        type: "heatmap", x: first.step, z: transpose(first.fan_in_counts), colorscale: "Viridis",
        colorbar: { title: { text: "units" }, thickness: 10 }, hovertemplate: "step %{x}, fan-in %{y}: %{z} units<extra></extra>",
      }] : [], layout("Fan-in over time", "step", "fan-in", { shapes: stepMarker(step) }));
    }
    // A run's second line in a chart is dashed (its colour says which run it is).
    const overTime = (key, title, yTitle, fields, extra = {}) => {
      const traces = [];
      series.forEach((body, i) => {
        fields.forEach(([field, name], which) => {
          traces.push(own(runs[i], { type: "scatter", mode: "lines", name: label(runs[i], name), x: body.step, y: body[field] },
                          which ? "dash" : "solid"));
        });
      });
      this.plot(key, traces, layout(title, "step", yTitle, { shapes: stepMarker(step), ...extra }));
    };
    overTime("degree-mean", "Fan-in mean and max over time", "fan-in", [["fan_in_mean", "mean"], ["fan_in_max", "max"]]);
    overTime("dead", "Dead units over time", "units", [["dead_out", "outputs with fan-in 0"], ["dead_in", "inputs with fan-out 0"]]);
    overTime("distance", "Mask distance over time", "share of active connections",
             [["distance_initial", "new since the start"], ["distance_previous", "new since the previous rewire"]]);
    // A run without this layer (fewer layers than the first run) is in no chart: said here.
    const missing = this.runs.filter((run) => !run.layers[index])
      .map((run) => note(`${run.name}: not drawn, it has no layer ${index} (${run.layers.length} layers)`));
    this.stats.replaceChildren(...answers.map((answer, i) => statsLine(many ? runs[i].name : null, answer)), ...missing);
  }

  // Fan-in over time of several runs: a heatmap cannot be overlaid, so one per run (small
  // multiples), stacked on one step axis with one colour scale (the same colour is the same
  // number of units in every run), each titled with the run's name in the run's colour.
  fanInOverTime(runs, series, step) {
    const count = runs.length;
    const height = (1 - MULTIPLE_GAP * (count - 1)) / count; // of each run's plot, a share of the whole
    const traces = [];
    const axes = {};
    const annotations = [];
    series.forEach((body, i) => {
      const top = 1 - i * (height + MULTIPLE_GAP);
      const axis = i ? `y${i + 1}` : "y";
      traces.push({
        type: "heatmap", name: plain(runs[i].name), legendgroup: runs[i].id, x: body.step, z: transpose(body.fan_in_counts),
        xaxis: "x", yaxis: axis, coloraxis: "coloraxis",
        hovertemplate: "%{fullData.name}<br>step %{x}, fan-in %{y}: %{z} units<extra></extra>",
      });
      axes[i ? `yaxis${i + 1}` : "yaxis"] = { domain: [top - height, top], anchor: "x", title: { text: "fan-in" }, automargin: true };
      annotations.push({ text: plain(runs[i].name), xref: "paper", yref: "paper", x: 0, y: top, xanchor: "left",
                         yanchor: "bottom", showarrow: false, font: { size: 12, color: runs[i].colour } });
    });
    this.plot("degree-time", traces, layout("Fan-in over time, one heatmap per run", "step", "fan-in", {
      ...axes, annotations, shapes: stepMarker(step), height: 70 + count * MULTIPLE_HEIGHT_PX,
      xaxis: { title: { text: "step", standoff: 2 }, zeroline: false, automargin: true, anchor: count > 1 ? `y${count}` : "y" },
      coloraxis: { colorscale: "Viridis", colorbar: { title: { text: "units" }, thickness: 10 } },
    }));
  }

  async drawSummary(step, generation) {
    const models = await Promise.all(this.runs.map((run) => this.get(urls.topologyModel(run.id, { step }))));
    if (generation !== this.generation) return;
    this.charts.hidden = true;
    this.churn.root.hidden = true;
    this.summary.hidden = false;
    this.summaryCharts.hidden = false;
    const many = this.runs.length > 1;
    this.summary.replaceChildren(...models.map((model, i) => summaryTable(many ? this.runs[i].name : null, model)));
    const names = (model) => model.layers.map((layer) => plain(layer.layer));
    // Several runs: each in its colour; a run's second bar (dead inputs) hatched.
    const bars = (field, name, hatched = false) => models.map((model, i) => {
      const trace = {
        type: "bar", name: plain(many ? `${this.runs[i].name}: ${name}` : name), x: names(model),
        y: model.layers.map((layer) => (field === "fan_in_mean" ? layer.fan_in_stats?.mean ?? null : layer[field] ?? null)),
      };
      if (!many) return trace;
      return runStyle(this.runs[i], hatched ? { ...trace, marker: { pattern: { shape: "/" } } } : trace);
    });
    this.plot("summary-dead", [...bars("dead_out", "outputs with fan-in 0"), ...bars("dead_in", "inputs with fan-out 0", true)],
              layout("Dead units per layer", "layer", "units", { barmode: "group", xaxis: { type: "category", automargin: true } }));
    this.plot("summary-degree", bars("fan_in_mean", "mean fan-in"),
              layout("Mean fan-in per layer", "layer", "inputs per unit", { barmode: "group", xaxis: { type: "category", automargin: true } }));
    this.stats.replaceChildren(...models.map((model, i) => chainLine(many ? this.runs[i].name : null, model)));
  }

  plot(key, traces, chartLayout) {
    const div = document.getElementById(`${this.prefix}-${key}`);
    if (div) this.draws.push(react(div, traces, { ...chartLayout, uirevision: "keep" }, PLOT_CONFIG));
  }
}

function transpose(rows) {
  const height = Math.max(0, ...rows.map((row) => row.length));
  const z = Array.from({ length: height }, () => new Array(rows.length).fill(0));
  rows.forEach((row, x) => row.forEach((value, y) => { z[y][x] = value; }));
  return z;
}

function note(text) {
  const line = document.createElement("p");
  line.textContent = text;
  return line;
}

function statsLine(runName, answer) {
  const line = document.createElement("p");
  const w = answer.weights;
  const median = (kind) => (w && w[kind].quantiles ? fmt(w[kind].quantiles[w.levels.indexOf(0.5)], 4) : "–");
  const weights = w ? ` · median |w| kept ${median("kept")}, dropped ${median("dropped")}, grown ${median("grown")}`
                    : " · |w| not recorded";
  line.textContent = `${runName ? `${runName}: ` : ""}${answer.layer} at rewire ${answer.rewire} (step ${answer.step}): ` +
    `${answer.active} active · fan-in mean ${fmt(answer.fan_in_stats.mean, 2)} (std ${fmt(answer.fan_in_stats.std, 2)}, ` +
    `max ${answer.fan_in_stats.max}) · fan-out mean ${fmt(answer.fan_out_stats.mean, 2)} (max ${answer.fan_out_stats.max}) · ` +
    `dead: ${answer.dead_out} outputs, ${answer.dead_in} inputs · new since start ${fmt(answer.distance_initial)}, ` +
    `since previous ${fmt(answer.distance_previous)}${weights}`;
  line.dataset.rewire = String(answer.rewire);
  return line;
}

function chainLine(runName, model) {
  const line = document.createElement("p");
  const chains = model.chains.map((chain) => `${chain.layers.join(" → ")}: effective ${chain.effective_params} of ` +
    `${chain.active_params} connections, ${chain.per_layer.reduce((sum, layer) => sum + layer.cut_from_input, 0)} units ` +
    `cut off from the input, ${chain.per_layer.reduce((sum, layer) => sum + layer.cut_from_output, 0)} from the output, ` +
    `${chain.inputs_unused} inputs unused`);
  line.textContent = `${runName ? `${runName}: ` : ""}${chains.length ? chains.join("; ") : "no chain of Linear layers"}`;
  return line;
}

function summaryTable(runName, model) {
  const box = document.createElement("div");
  box.className = "topology-table";
  if (runName) {
    const title = document.createElement("h4");
    title.textContent = runName;
    box.append(title);
  }
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  for (const text of ["layer", "active", "density", "fan-in mean", "fan-in max", "fan-out mean", "dead outputs", "dead inputs"]) {
    const cell = document.createElement("th");
    cell.textContent = text;
    head.append(cell);
  }
  const body = table.createTBody();
  for (const layer of model.layers) {
    const row = body.insertRow();
    const cells = layer.error ? [layer.layer, layer.error] : [
      layer.layer, layer.active, fmt(layer.density, 4), fmt(layer.fan_in_stats.mean, 2), layer.fan_in_stats.max,
      fmt(layer.fan_out_stats.mean, 2), layer.dead_out, layer.dead_in];
    for (const value of cells) row.insertCell().textContent = String(value);
  }
  box.append(table);
  return box;
}
