// "What this mask would buy" (issue 25 item 4): the layer table's columns "speedup b1 / b16"
// (the predicted speedup of the layer's fastest dst_core.compact format over dense, at batch 1
// and 16) and "to structure" (the share of its active connections that would have to move to
// reach constant fan-in and 2:4), at the player's step, with the whole model in the footer.
//
// One `GET /speedup` per settled step: asked once the step has stayed SETTLE_MS (or, while a
// live run moves it on every rewire, at most MAX_WAIT_MS after the first unanswered move), one
// request in flight, an answer for a step no longer wanted dropped. While the server still
// measures its cost table the answer is `pending`: the cells say "measuring…" and it is asked
// again after Retry-After.
//
// Over the run: `speedupChart` draws `/speedup/series` for the whole model (Σ dense ms / Σ best
// ms at batch 1 and 16; Σ moved / Σ active to each structure) under the metric charts, asked
// for once the page's series load and, while a live run goes on, again at most every
// SERIES_REFRESH_MS.
import { ApiError, getJson } from "./api.js";
import { chartBase, chartTitle, MARGINS, RUN_COLOURS } from "./chart_style.js";
import * as urls from "./urls.js";

const SETTLE_MS = 250;
const MAX_WAIT_MS = 1500;
const COST_SHARE = 4; // and at least 4× the last answer's time after it: a live ResNet's 54 masks
//                      are decoded per answer, and the panels come first
const RETRY_DEFAULT_S = 5;
const SERIES_POINTS = 60;
const SERIES_REFRESH_MS = 10_000;

// 2.34 → "2.3×"; a layer kept dense (speedup 1) → "1×".
export function times(value) {
  if (value === null || value === undefined) return "–";
  return value < 1.005 ? "1×" : `${value.toFixed(value < 10 ? 1 : 0)}×`;
}

export function percent(share) {
  if (share === null || share === undefined) return "–";
  return `${(100 * share).toFixed(share > 0 && share < 0.1 ? 1 : 0)}%`;
}

// "csr" when both batches choose it, else "dense · csr".
function formats(speedups) {
  const b1 = speedups?.["1"]?.best;
  const b16 = speedups?.["16"]?.best;
  return b1 === b16 ? b1 || "" : `${b1 || "–"} · ${b16 || "–"}`;
}

// One line of a two-line cell (the table is narrow: the layer panels share the screen).
function line(text, className = "") {
  const span = document.createElement("span");
  span.className = `line ${className}`.trim();
  span.textContent = text;
  return span;
}

export class SpeedupColumn {
  // overview: the LayerOverview whose rows (entry.speedup, entry.structure cells) this fills;
  // onSeries(): a new `/speedup/series` answer is in `this.series` (the chart is to be drawn).
  constructor(overview, { onSeries = () => {} } = {}) {
    this.overview = overview;
    this.onSeries = onSeries;
    this.generation = 0;
    this.close();
  }

  // `after`: the cells are asked for once it settles (the panels' first paint: on a shared
  // server the panels' views come first, and each estimate reads every layer's mask).
  open(runId, after = null) {
    this.close();
    this.runId = runId;
    if (!after) return;
    const generation = this.generation;
    this.held = true;
    Promise.resolve(after).catch(() => undefined).then(() => {
      if (generation !== this.generation) return;
      this.held = false;
      if (this.wanted !== null && this.wanted !== this.shown && !this.timer) this.schedule();
    });
  }

  close() {
    this.generation += 1;
    clearTimeout(this.timer);
    this.timer = 0;
    this.runId = null;
    this.held = false; // until the open's `after` settles, nothing is asked
    this.wanted = null; // the player's step
    this.shown = null; // the step the cells show
    this.since = 0; // when `wanted` first differed from `shown`
    this.inFlight = false;
    this.cost = 0; // ms the last answer took
    this.doneAt = 0;
    clearTimeout(this.seriesTimer);
    this.seriesTimer = 0;
    this.series = null;
    this.seriesRevision = 0;
    this.seriesAt = 0;
    this.seriesInFlight = false;
  }

  // The chart's series: asked now (the first time), or at most every SERIES_REFRESH_MS (`live`).
  loadSeries({ live = false } = {}) {
    // Before the run's first rewire there is no mask to estimate (the server would say 404).
    if (!this.runId || this.wanted === null || this.seriesInFlight || this.seriesTimer) return;
    const wait = live ? Math.max(0, SERIES_REFRESH_MS - (performance.now() - this.seriesAt)) : 0;
    if (this.series && !live) return;
    this.seriesTimer = setTimeout(() => { this.seriesTimer = 0; this.fetchSeries(); }, wait);
  }

  async fetchSeries() {
    const { generation, runId } = this;
    this.seriesInFlight = true;
    this.seriesAt = performance.now();
    let retryS = 0;
    try {
      const { body, headers } = await getJson(urls.speedupSeries(runId, { points: SERIES_POINTS }));
      if (generation !== this.generation) return;
      if (body.pending) retryS = Number(headers.get("Retry-After")) || RETRY_DEFAULT_S;
      else {
        this.series = body;
        this.seriesRevision += 1;
        this.onSeries();
      }
    } catch { /* no mask yet (404) or the server gone: the chart waits for the next rewire */ }
    finally {
      if (generation === this.generation) {
        this.seriesInFlight = false;
        if (retryS) this.seriesTimer = setTimeout(() => { this.seriesTimer = 0; this.fetchSeries(); }, retryS * 1000);
      }
    }
  }

  // The player is at `step` (null: no rewire yet).
  at(step) {
    if (!this.runId) return;
    if (step === null || step === undefined) {
      this.wanted = null;
      this.shown = null;
      this.paint(null, "–");
      return;
    }
    if (step === this.wanted) return; // shown, or already asked for
    if (this.wanted === this.shown) this.since = performance.now(); // the first unanswered move
    this.wanted = step;
    clearTimeout(this.timer);
    this.timer = 0;
    if (step !== this.shown) this.schedule();
  }

  // Ask for the wanted step once it has settled, and paced by the answers' cost.
  schedule() {
    if (this.held) return; // asked once released
    const now = performance.now();
    const settle = Math.min(SETTLE_MS, Math.max(0, MAX_WAIT_MS - (now - this.since)));
    const paced = COST_SHARE * this.cost - (now - this.doneAt);
    this.timer = setTimeout(() => { this.timer = 0; this.fetch(); }, Math.max(settle, paced));
  }

  async fetch() {
    if (this.inFlight || !this.runId || this.wanted === null || this.wanted === this.shown) return;
    const { generation, wanted: step, runId } = this;
    this.inFlight = true;
    const started = performance.now();
    let retryS = 0;
    let unanswered = false; // nothing answered (the server gone): asked again on the next move only
    try {
      const { body, headers } = await getJson(urls.speedup(runId, { step }));
      this.doneAt = performance.now();
      this.cost = body.pending ? 0 : this.doneAt - started; // a pending answer waited, not worked
      if (generation !== this.generation) return;
      if (body.pending || body.error) {
        retryS = Number(headers.get("Retry-After")) || RETRY_DEFAULT_S;
        this.paint(null, body.error ? "no estimate" : "measuring…", body.error || "");
      } else if (step === this.wanted) {
        this.paint(body);
        this.shown = step;
      }
    } catch (error) {
      if (generation !== this.generation) return;
      // 404: no mask stored by this step; anything else (the server gone): asked again on the next move.
      const missing = error instanceof ApiError && error.status === 404;
      unanswered = !(error instanceof ApiError);
      this.paint(null, missing ? "–" : "?", error.message);
      if (missing && step === this.wanted) this.shown = step;
    } finally {
      if (generation === this.generation) {
        this.inFlight = false;
        if (retryS) this.timer = setTimeout(() => { this.timer = 0; this.fetch(); }, retryS * 1000);
        else if (this.wanted !== null && this.wanted !== this.shown && !this.timer && !unanswered) {
          this.schedule(); // moved meanwhile
        }
        if (unanswered) this.wanted = this.shown; // the next move (or rewire) asks again
      }
    }
  }

  // The answer's figures into the rows (answer null: every cell says `text`).
  paint(answer, text = "–", title = "") {
    const table = document.getElementById("layer-overview-table");
    if (table) table.dataset.speedupStep = answer ? String(answer.step) : "";
    const byName = new Map((answer?.layers || []).map((layer) => [layer.layer, layer]));
    for (const entry of this.overview.rows) {
      const layer = byName.get(entry.name);
      if (!layer) {
        for (const cell of [entry.speedup, entry.structure]) {
          cell.textContent = text;
          cell.title = title;
          for (const key of ["b1", "b16", "fanIn", "twoFour"]) delete cell.dataset[key];
        }
        continue;
      }
      const b1 = layer.speedups?.["1"]?.speedup;
      const b16 = layer.speedups?.["16"]?.speedup;
      entry.speedup.replaceChildren(line(`${times(b1)} / ${times(b16)}`),
                                    line(formats(layer.speedups), "muted speedup-format"));
      entry.speedup.dataset.b1 = String(b1 ?? "");
      entry.speedup.dataset.b16 = String(b16 ?? "");
      entry.speedup.title = `density ${percent(layer.density)} · batch 1: ${layer.speedups?.["1"]?.best} ` +
        `${times(b1)} · batch 16: ${layer.speedups?.["16"]?.best} ${times(b16)} (predicted from this server's cost table)`;
      entry.structure.replaceChildren(line(`fan-in ${percent(layer.to_constant_fan_in)}`),
                                      line(`2:4 ${percent(layer.to_2_4)}${layer.structure_note ? "*" : ""}`));
      entry.structure.dataset.fanIn = String(layer.to_constant_fan_in ?? "");
      entry.structure.dataset.twoFour = String(layer.to_2_4 ?? "");
      entry.structure.title = layer.structure_note || "share of active connections that would have to move";
    }
    this.footer(table, answer);
  }

  // The whole model under the rows: Σ dense ms / Σ best ms, Σ moved / Σ active.
  footer(table, answer) {
    if (!table) return;
    let foot = table.tFoot;
    if (!answer?.model) {
      foot?.remove();
      return;
    }
    if (!foot) {
      foot = table.createTFoot();
      const row = foot.insertRow();
      row.className = "speedup-model";
      const label = row.insertCell();
      label.colSpan = 5;
      label.textContent = "whole model";
      row.insertCell().className = "number speedup";
      row.insertCell().className = "number structure";
      row.insertCell().colSpan = 2;
    }
    const [speed, structure] = [foot.rows[0].cells[1], foot.rows[0].cells[2]];
    const model = answer.model;
    speed.textContent = `${times(model.speedup_b1)} / ${times(model.speedup_b16)}`;
    speed.dataset.b1 = String(model.speedup_b1 ?? "");
    speed.dataset.b16 = String(model.speedup_b16 ?? "");
    structure.replaceChildren(line(`fan-in ${percent(model.to_constant_fan_in)}`), line(`2:4 ${percent(model.to_2_4)}`));
  }
}

// The whole model over the run: speedup at batch 1 and 16 (left axis) and the share of active
// connections away from constant fan-in and 2:4 (right axis, %).
export function speedupChart(series) {
  const x = series?.step || [];
  const model = series?.model || {};
  const trace = (name, values, colour, extra = {}) => ({
    type: "scatter", mode: "lines+markers", name, x, y: values || [], line: { color: colour, width: 1.5 },
    marker: { size: 4 }, ...extra,
  });
  const share = (values) => (values || []).map((value) => (value === null ? null : 100 * value));
  const traces = [
    trace("speedup b1", model.speedup_b1, RUN_COLOURS[0], { hovertemplate: "step %{x}: %{y:.2f}× at batch 1<extra></extra>" }),
    trace("speedup b16", model.speedup_b16, RUN_COLOURS[1], { hovertemplate: "step %{x}: %{y:.2f}× at batch 16<extra></extra>" }),
    trace("to constant fan-in", share(model.to_constant_fan_in), RUN_COLOURS[2],
          { yaxis: "y2", line: { color: RUN_COLOURS[2], width: 1.5, dash: "dot" }, hovertemplate: "step %{x}: %{y:.1f}% to move<extra></extra>" }),
    trace("to 2:4", share(model.to_2_4), RUN_COLOURS[3],
          { yaxis: "y2", line: { color: RUN_COLOURS[3], width: 1.5, dash: "dot" }, hovertemplate: "step %{x}: %{y:.1f}% to move<extra></extra>" }),
  ];
  return [traces, {
    ...chartBase({ ...MARGINS.metric, r: 52 }, -0.3),
    title: chartTitle("What the masks would buy (whole model, predicted)"),
    xaxis: { title: { text: "step", standoff: 2 }, zeroline: false },
    yaxis: { title: { text: "speedup over dense (×)" }, rangemode: "tozero", automargin: true },
    yaxis2: { title: { text: "to structure (% of active)" }, overlaying: "y", side: "right", rangemode: "tozero",
              showgrid: false, automargin: true, ticksuffix: "%", tickformat: ".0f" },
  }];
}
