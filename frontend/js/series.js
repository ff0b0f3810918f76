// The numbers a run's charts show: metric series downsampled by the server (`/metrics`) and the
// per-layer rewire series (`/rewire-series`), extended live from the websocket's events.
//
// Both stay bounded: once a series holds twice its budget, neighbouring points are merged
// (keeping min, max and the last value), so a run followed for hours holds as many points as
// the first answer did.
import { api, getJson } from "./api.js";
import * as urls from "./urls.js";

export const METRIC_BUCKETS = 500;
export const REWIRE_BUCKETS = 240;
// Series one /metrics answer holds (the server's bound). A run that logged more fields than
// that gets the fields the fixed charts draw first (charts.js), then the others in the order
// they were first logged.
export const MAX_FIELDS = 64;
const CHARTED = ["loss", "accuracy", "density", "itop_rate", "train_loss", "test_loss",
                 "train_accuracy", "test_accuracy"];

// One metric: step, min, max, last (min = max = last for a point of its own).
export class Series {
  constructor(data = null, budget = METRIC_BUCKETS) {
    this.budget = budget;
    this.step = data ? [...data.step] : [];
    this.min = data ? [...data.min] : [];
    this.max = data ? [...data.max] : [];
    this.last = data ? [...data.last] : [];
  }

  get length() {
    return this.step.length;
  }

  push(step, value) {
    const number = typeof value === "number" && Number.isFinite(value) ? value : null;
    const end = this.step.length - 1;
    if (end >= 0 && step < this.step[end]) return; // already covered by the downsampled answer
    this.step.push(step);
    this.min.push(number);
    this.max.push(number);
    this.last.push(number);
    if (this.step.length >= 2 * this.budget) this.compact();
  }

  compact() {
    const merged = { step: [], min: [], max: [], last: [] };
    for (let i = 0; i < this.step.length; i += 2) {
      const j = Math.min(i + 1, this.step.length - 1);
      merged.step.push(this.step[j]);
      merged.min.push(lowest(this.min[i], this.min[j]));
      merged.max.push(highest(this.max[i], this.max[j]));
      merged.last.push(this.last[j]);
    }
    Object.assign(this, merged);
  }
}

const lowest = (a, b) => (a === null ? b : b === null ? a : Math.min(a, b));
const highest = (a, b) => (a === null ? b : b === null ? a : Math.max(a, b));

// Non-numeric fields of a metrics event that are not series of their own.
const NOT_SERIES = new Set(["seq", "step", "type", "layer_density"]);

// Every numeric metric of a run, by event type ("metrics", "eval") and field name.
export class MetricSeries {
  constructor(answer = {}) {
    this.types = {};
    for (const [type, fields] of Object.entries(answer || {})) {
      this.types[type] = {};
      for (const [field, data] of Object.entries(fields || {})) this.types[type][field] = new Series(data);
    }
    this.only = null; // a Set of the fields asked for, when the run logged more than an answer holds
    this.revision = 0;
  }

  get(type, field) {
    return (this.types[type] && this.types[type][field]) || null;
  }

  fields(type) {
    return Object.keys(this.types[type] || {});
  }

  // A live `metrics` or `eval` event: one point for each of its numeric fields (of those the
  // page asked for, when the run has more than one answer holds: `only`).
  push(event) {
    const fields = (this.types[event.type] ||= {});
    for (const [field, value] of Object.entries(event)) {
      if (NOT_SERIES.has(field) || (this.only && !this.only.has(field))) continue;
      if (value !== null && (typeof value !== "number" || typeof value === "boolean")) continue;
      (fields[field] ||= new Series()).push(event.step, value);
    }
    this.revision += 1;
  }
}

// Per rewire (downsampled to buckets of rewires): each layer's active count, added and removed,
// and the run's turnover and ITOP rate.
// Replace the nulls before a layer's first stored count by the count it had then: the first
// count minus its net change (or `fallback` when the layer never changed at all).
function fillLeading(active, added, removed, fallback) {
  const first = active.findIndex((value) => value !== null && value !== undefined);
  const before = first < 0 ? fallback : active[first] - (added[first] ?? 0) + (removed[first] ?? 0);
  const end = first < 0 ? active.length : first;
  for (let i = 0; i < end; i++) active[i] = before;
}

export class RewireSeries {
  constructor(answer, layers) {
    const names = layers.map((layer) => layer.name);
    this.names = names;
    this.size = layers.map((layer) => layer.shape[0] * layer.shape[1]);
    this.budget = REWIRE_BUCKETS;
    const index = new Map((answer?.layers || []).map((layer, i) => [layer.name ?? layer, i]));
    const pick = (key, i) => (index.has(names[i]) ? [...answer[key][index.get(names[i])]] : []);
    this.step = answer ? [...answer.steps] : [];
    this.active = names.map((_, i) => (answer ? pick("active", i) : []));
    this.added = names.map((_, i) => (answer ? pick("added", i) : []));
    this.removed = names.map((_, i) => (answer ? pick("removed", i) : []));
    // A layer no rewire changed (ERK keeps small layers dense) has no stored count at a rewire:
    // it still has its connections, so it shows the count it had before (or its layout's).
    this.initial = layers.map((layer) => (Number.isFinite(layer.active) ? layer.active : null));
    this.active.forEach((values, i) => fillLeading(values, this.added[i], this.removed[i], this.initial[i]));
    this.turnover = answer ? [...answer.turnover] : [];
    this.itop = answer ? [...answer.itop_rate] : [];
    this.rewires = answer ? answer.rewires : 0;
    this.input = answer ? answer.input : null; // {image_shape} of the run's meta, for the input view
    this.revision = 0;
  }

  // A live `rewire` event: {layers: {name: {added, removed, active}}, turnover, itop_rate}.
  push(event) {
    if (this.step.length && event.step <= this.step[this.step.length - 1]) return;
    const changes = event.layers || {};
    this.step.push(event.step);
    this.names.forEach((name, i) => {
      const change = changes[name];
      const before = this.active[i].length ? this.active[i][this.active[i].length - 1] : this.initial[i];
      this.active[i].push(change ? change.active : before);
      this.added[i].push(change ? change.added : 0);
      this.removed[i].push(change ? change.removed : 0);
    });
    this.turnover.push(event.turnover ?? null);
    this.itop.push(event.itop_rate ?? null);
    this.rewires += 1;
    this.revision += 1;
    if (this.step.length >= 2 * this.budget) this.compact();
  }

  compact() {
    const pairs = (values, merge) => {
      const out = [];
      for (let i = 0; i < values.length; i += 2) {
        out.push(i + 1 < values.length ? merge(values[i], values[i + 1]) : values[i]);
      }
      return out;
    };
    const lastOf = (_, b) => b;
    const sum = (a, b) => (a ?? 0) + (b ?? 0);
    this.step = pairs(this.step, lastOf);
    this.active = this.active.map((values) => pairs(values, lastOf));
    this.added = this.added.map((values) => pairs(values, sum));
    this.removed = this.removed.map((values) => pairs(values, sum));
    this.turnover = pairs(this.turnover, (a, b) => (a === null ? b : b === null ? a : (a + b) / 2));
    this.itop = pairs(this.itop, lastOf);
  }

  density(layerIndex) {
    const size = this.size[layerIndex] || 1;
    return this.active[layerIndex].map((value) => (value === null ? null : value / size));
  }

  totals() {
    const added = this.step.map((_, j) => this.added.reduce((total, layer) => total + (layer[j] || 0), 0));
    const removed = this.step.map((_, j) => this.removed.reduce((total, layer) => total + (layer[j] || 0), 0));
    return { added, removed };
  }
}

export async function loadSeries(runId, layers) {
  const [metrics, rewires] = await Promise.all([
    loadMetrics(runId),
    api(urls.rewireSeries(runId, REWIRE_BUCKETS)),
  ]);
  return { metrics, rewires: new RewireSeries(rewires, layers) };
}

// The run's metric series: the first fields it logged, which for almost every run are all of
// them (the answer says how many there are); past MAX_FIELDS, the ones the page charts.
async function loadMetrics(runId) {
  const first = await getJson(urls.metrics(runId, METRIC_BUCKETS));
  const total = Number(first.headers.get("X-Metric-Names-Total"));
  const answered = Object.values(first.body || {}).reduce((count, fields) => count + Object.keys(fields).length, 0);
  if (!(total > answered)) return new MetricSeries(first.body);
  const names = await api(urls.metricNames(runId));
  const logged = [...new Set([...(names.metrics || []), ...(names.eval || [])])];
  const chosen = [...CHARTED.filter((field) => logged.includes(field)),
                  ...logged.filter((field) => !CHARTED.includes(field))].slice(0, MAX_FIELDS);
  const series = new MetricSeries(await api(urls.metrics(runId, METRIC_BUCKETS, chosen)));
  series.only = new Set(chosen);
  return series;
}
