// Compare: two or more runs side by side, one layer panel per run at the same step, and every
// metric overlaid. Same parts as the run view: the shared Player, panels drawn from `/view` at
// panel resolution, downsampled series extended live from announce-mode websockets.
// Each run keeps one colour (chart_style.js runColour, by its position in the link) in every
// chart, panel and the table of the settings that differ between the runs. Under the panels, the
// mask overlap of a layer every run has (overlap.js: Jaccard matrix at the player's step, and
// each pair over time).
import { api } from "./api.js";
import { runColour } from "./chart_style.js";
import { COMPARE_METRICS, compareChart, compareExtraChart, compareExtraFields, drawChart } from "./charts.js";
import { OverlapSection } from "./overlap.js";
import { PanelSet } from "./panels.js";
import { Player } from "./player.js";
import { loadSeries } from "./series.js";
import { isActive } from "./statuses.js";
import { RunStream } from "./stream.js";
import { TopologySection } from "./topology.js";
import * as urls from "./urls.js";
import { ViewCache } from "./views.js";

const $ = (id) => document.getElementById(id);
const CHART_INTERVAL_MS = 250;

export class CompareView {
  constructor({ palette, message }) {
    this.palette = palette;
    this.message = message;
    this.runs = [];
    this.key = "";
    this.layer = 0;
    this.player = new Player({
      scrubber: $("compare-scrubber"), back: $("compare-back"), forward: $("compare-forward"),
      play: $("compare-play"), position: $("compare-position"), speed: null,
    });
    this.player.subscribe(() => { this.panels?.refresh(); this.chartsDirty(); });
    $("compare-layer").addEventListener("change", (event) => { this.layer = Number(event.target.value); this.layout(); });
    $("compare-mode").addEventListener("change", () => this.panels?.refresh());
    this.topology = new TopologySection($("compare-topology"), { player: this.player, prefix: "compare-topology" });
    this.overlap = new OverlapSection($("compare-overlap"), { player: this.player, prefix: "compare-overlap" });
    this.generation = 0;
    this.grouped = false; // seed groups drawn as mean ± band (the checkbox, when groups exist)
    $("compare-group-seeds").addEventListener("change", (event) => {
      this.grouped = event.target.checked;
      this.chartsDirty();
    });
  }

  // The seed-group checkbox: shown only when some compared runs differ in nothing but seed.
  showGroups() {
    const groups = seedGroups(this.runs);
    $("compare-groups").hidden = groups.length === 0;
    if (!groups.length) return;
    const sizes = groups.map((group) => group.length).join(", ");
    $("compare-groups-label").textContent = groups.length === 1
      ? `Draw the ${sizes} runs that differ only in seed as their mean ± 1 s.d.`
      : `Draw the ${groups.length} groups of runs that differ only in seed (${sizes} runs) as their mean ± 1 s.d.`;
  }

  async open(ids) {
    this.close();
    const generation = ++this.generation;
    this.key = ids.join(",");
    $("compare-error").textContent = "";
    let runs;
    try {
      runs = await Promise.all(ids.map(async (id) => {
        const [run, rewires] = await Promise.all([api(urls.run(id)), api(urls.rewires(id))]);
        return { id, name: run.name, run, lastSeq: rewires.last_seq, layers: rewires.layers, steps: rewires.steps };
      }));
    } catch (error) {
      if (generation !== this.generation) return;
      // A bad link says so, here and in the runs list's message line.
      const text = `Cannot compare ${ids.join(", ")}: ${error.message}`;
      $("compare-error").textContent = text;
      $("compare-body").hidden = true;
      this.message(text);
      return;
    }
    if (generation !== this.generation) return;
    runs.forEach((entry, position) => { entry.colour = runColour(position); });
    this.runs = runs;
    this.extraCharts = new Map();
    showDiff(runs);
    this.showGroups();
    const loaded = await Promise.all(runs.map((entry) => loadSeries(entry.id, entry.layers).catch(() => null)));
    if (generation !== this.generation) return;
    runs.forEach((entry, index) => {
      entry.views = new ViewCache(entry.id);
      const series = loaded[index];
      entry.metrics = series?.metrics;
      entry.rewires = series?.rewires;
      entry.pending = null;
      if (isActive(entry.run.status)) {
        entry.stream = new RunStream(entry.id, entry.lastSeq + 1, {
          onEvent: (event) => this.handle(entry, event, generation),
        }).open();
      }
    });
    $("compare-body").hidden = false;
    const select = $("compare-layer");
    const reference = runs[0].layers;
    select.replaceChildren(...reference.map((layer, index) => new Option(`${index}: ${layer.name}`, String(index))));
    this.layer = Math.min(this.layer, Math.max(0, reference.length - 1));
    select.value = String(this.layer);
    $("compare-charts").replaceChildren(...COMPARE_METRICS.map(([key, title]) => {
      const div = document.createElement("div");
      div.className = "chart";
      div.id = `compare-chart-${key}`;
      div.setAttribute("role", "img");
      div.setAttribute("aria-label", `${title} of the compared runs`);
      return div;
    }));
    this.player.followable = runs.some((entry) => isActive(entry.run.status));
    this.player.live = this.player.followable;
    this.topology.open(runs.map((entry) => ({ id: entry.id, name: entry.name, layers: entry.layers, colour: entry.colour })));
    this.overlap.open(runs); // the entries themselves: it reads each run's `steps` as they grow
    this.player.setSteps(this.unionSteps());
    this.layout();
  }

  unionSteps() {
    const all = new Set();
    for (const entry of this.runs) for (const step of entry.steps) all.add(step);
    return [...all].sort((a, b) => a - b);
  }

  // One panel per run for the chosen layer, in run order.
  layout() {
    this.panels?.clear();
    const container = $("compare-heatmaps");
    container.replaceChildren();
    const byPanel = new Map();
    this.panels = new PanelSet({
      views: (panel) => byPanel.get(panel).views,
      target: () => ({ step: this.player.step, mode: $("compare-mode").value, palette: this.palette() }),
    });
    this.runs.forEach((entry, index) => {
      const layer = entry.layers[this.layer];
      if (!layer) return;
      const panel = this.panels.add(container, { index: this.layer, ...layer },
                                    { id: `compare-heatmap-${index}`, title: entry.name });
      panel.root.style.setProperty("--run-colour", entry.colour); // its border and title
      panel.root.dataset.runId = entry.id;
      byPanel.set(panel, entry);
    });
    this.chartsDirty();
  }

  handle(entry, event, generation) {
    if (generation !== this.generation) return;
    if (event.type === "topology") {
      if (entry.pending !== null && event.step > entry.pending) this.rewired(entry, entry.pending);
      entry.pending = event.step;
    } else if (event.type === "metrics" || event.type === "eval") {
      if (entry.pending !== null && event.step > entry.pending) this.rewired(entry, entry.pending);
      entry.metrics?.push(event);
    } else if (event.type === "rewire") {
      entry.rewires?.push(event);
    } else if (event.type === "end") {
      if (entry.pending !== null) this.rewired(entry, entry.pending);
      entry.run = { ...entry.run, status: "ended" };
      this.player.setFollowable(this.runs.some((other) => isActive(other.run.status)));
    }
    this.chartsDirty();
  }

  rewired(entry, step) {
    entry.pending = null;
    if (!entry.steps.length || entry.steps[entry.steps.length - 1] < step) entry.steps = [...entry.steps, step];
    this.player.setSteps(this.unionSteps());
  }

  chartsDirty() {
    if (this.chartTimer || this.runs.length === 0) return;
    this.chartTimer = setTimeout(() => {
      this.chartTimer = 0;
      if ($("view-compare").hidden) return;
      const marker = this.player.live ? null : this.player.step;
      const ready = this.runs.filter((entry) => entry.metrics);
      // datarevision: the series grow in place while a compared run streams.
      // Which runs, and how far each has grown: a chart whose revision is drawn only moves its marker.
      const groups = this.grouped ? seedGroups(ready) : [];
      const revision = ready.map((entry) => `${entry.id}.${entry.metrics.revision}.${entry.rewires.revision}`).join("-")
        + (groups.length ? `-groups:${groups.map((group) => group.map((entry) => entry.id).join("+")).join("|")}` : "");
      for (const [key] of COMPARE_METRICS) {
        const div = $(`compare-chart-${key}`);
        if (div) drawChart(div, () => compareChart(key, ready, groups), marker, revision);
      }
      for (const field of compareExtraFields(ready)) {
        drawChart(this.extraDiv(field), () => compareExtraChart(field, ready, groups), marker, revision);
      }
    }, CHART_INTERVAL_MS);
  }

  extraDiv([type, field]) {
    this.extraCharts ||= new Map();
    const key = `${type}:${field}`;
    let div = this.extraCharts.get(key);
    if (!div) {
      div = document.createElement("div");
      div.className = "chart chart-extra";
      div.id = `compare-chart-extra-${this.extraCharts.size}`;
      div.dataset.field = field;
      div.setAttribute("role", "img");
      div.setAttribute("aria-label", `${field} of the compared runs`);
      $("compare-charts").append(div);
      this.extraCharts.set(key, div);
    }
    return div;
  }

  resize() {
    this.panels?.refresh();
  }

  close() {
    this.generation += 1;
    this.topology.close();
    this.overlap.close();
    for (const entry of this.runs) {
      if (entry.stream) entry.stream.close();
      if (entry.views) entry.views.close();
    }
    this.runs = [];
    this.key = "";
    this.panels?.clear();
    this.panels = null;
    this.player.pause();
    clearTimeout(this.chartTimer);
    this.chartTimer = 0;
  }
}

// A setting's value as one string, for telling equal values apart: objects with their keys in
// order (two configs may list a method's options in another order); undefined for a run that
// did not record the setting.
function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value !== null && typeof value === "object") {
    return `{${Object.keys(value).sort().map((key) => `${JSON.stringify(key)}:${canonical(value[key])}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

// Runs whose settings are the same but for `seed` (and `name`), in groups of two or more, each
// in the order compared: Compare can draw a group as its mean with a ±1 s.d. band. Runs that
// recorded no settings or no seed are never grouped (nothing says they are repeats).
export function seedGroups(runs) {
  const byConfig = new Map();
  for (const entry of runs) {
    const config = entry.run?.config || {};
    if (!("seed" in config)) continue;
    const rest = Object.fromEntries(Object.entries(config).filter(([key]) => key !== "seed" && key !== "name"));
    const key = canonical(rest);
    if (!byConfig.has(key)) byConfig.set(key, []);
    byConfig.get(key).push(entry);
  }
  return [...byConfig.values()].filter((group) =>
    group.length >= 2 && new Set(group.map((entry) => canonical(entry.run.config.seed))).size === group.length);
}

// The settings (fields of the runs' `config`) whose values differ between the runs, in the order
// the configs list them. `name` is left out: it heads each run's column.
export function differingSettings(configs) {
  const keys = [...new Set(configs.flatMap((config) => Object.keys(config)))].filter((key) => key !== "name");
  return keys.filter((key) => new Set(configs.map((config) => canonical(config[key]))).size > 1);
}

function shown(value) {
  if (value === undefined) return "–"; // not recorded by this run
  if (value === null) return "none";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

// #compare-diff: a row per setting that differs, a column per run headed by its name in its colour.
// Names and values are data: set as text, never as markup.
function showDiff(runs) {
  const configs = runs.map((entry) => entry.run.config || {});
  const keys = differingSettings(configs);
  const summary = $("compare-diff-summary");
  if (configs.every((config) => Object.keys(config).length === 0)) summary.textContent = "None of these runs recorded its settings.";
  else if (!keys.length) summary.textContent = "The runs' settings are the same.";
  else summary.textContent = `${keys.length} ${keys.length === 1 ? "setting differs" : "settings differ"}:`;
  const table = $("compare-diff-table");
  table.hidden = keys.length === 0;
  const head = document.createElement("tr");
  const corner = document.createElement("th");
  corner.scope = "col";
  corner.textContent = "setting";
  head.append(corner);
  for (const entry of runs) {
    const cell = document.createElement("th");
    cell.scope = "col";
    cell.className = "run-name";
    cell.dataset.runId = entry.id;
    cell.style.setProperty("--run-colour", entry.colour);
    cell.textContent = entry.name;
    head.append(cell);
  }
  const rows = keys.map((key) => {
    const row = document.createElement("tr");
    row.dataset.key = key;
    const name = document.createElement("th");
    name.scope = "row";
    name.textContent = key;
    row.append(name);
    for (const config of configs) {
      const cell = document.createElement("td");
      cell.textContent = shown(config[key]);
      row.append(cell);
    }
    return row;
  });
  const thead = document.createElement("thead");
  thead.append(head);
  const tbody = document.createElement("tbody");
  tbody.append(...rows);
  table.replaceChildren(thead, tbody);
}
