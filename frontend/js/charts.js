// Metric charts of one run, and the same metrics overlaid for several runs (Compare).
//
// Every name that reaches Plotly (run, layer, metric) goes through `plain` first: Plotly renders
// a subset of HTML in titles, legends and hover labels.
import { chartBase, chartTitle, COLOURS, MARGINS, PLOT_CONFIG, runStyle, stepMarker } from "./chart_style.js";
import { plotly, plotlyNow, react, relayout } from "./plotly.js";
import { plain } from "./text.js";

const BASE = {
  ...chartBase(MARGINS.metric, -0.3),
  xaxis: { title: { text: "step", standoff: 2 }, zeroline: false },
};
const WAITING = { text: "waiting for data", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5,
                  font: { size: 14, color: COLOURS.waiting } };

function layout(title, yTitle, extra = {}) {
  // automargin: long tick labels (densities like 0.09994) push the axis title out instead of
  // printing over it.
  return { ...BASE, title: chartTitle(title),
           yaxis: { title: { text: plain(yTitle) }, automargin: true }, ...extra };
}

const line = (name, series, extra = {}) => ({
  type: "scatter", mode: "lines", name: plain(name), x: series ? series.step : [], y: series ? series.last : [], ...extra,
});

const logged = (pick, fields) => fields.filter((field) => pick(field))
  .map((field) => line(`${field.replace("_", " ")} (logged)`, pick(field), { mode: "lines+markers" }));

const hasPoints = (traces) => traces.some((trace) => trace.x && trace.x.length > 0);

// Metrics drawn by the fixed charts (by event type); every other numeric field of a run is drawn
// in a chart of its own group (see extraGroups). `epoch` is a counter, not a metric.
const KNOWN = {
  metrics: new Set(["loss", "accuracy", "density", "itop_rate", "epoch", "train_loss", "test_loss",
                    "train_accuracy", "test_accuracy"]),
  eval: new Set(["train_loss", "train_accuracy", "test_loss", "test_accuracy", "epoch"]),
};

// The group of a metric name: what comes before its first "/", "." or "_" (`val/top5` and
// `val_top1` go together), the whole name when it has none.
export function metricGroup(field) {
  const match = /^(.+?)[/._]/.exec(field);
  return match ? match[1] : field;
}

// Plotly's default colours, given explicitly: a smoothed chart draws each line twice (the raw
// one faint behind the smoothed one), and the pair must share a colour.
const COLORWAY = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                  "#7f7f7f", "#bcbd22", "#17becf"];
export const SMOOTHING_MAX = 0.99;

// TensorBoard's smoothing: an exponential moving average with weight `weight` (0 = raw),
// debiased (divided by 1 − weight^n) so the first points are not pulled towards 0. A missing
// value stays missing and does not move the average.
export function smooth(values, weight) {
  if (!(weight > 0)) return [...values];
  let average = 0;
  let count = 0;
  return values.map((value) => {
    if (typeof value !== "number" || !Number.isFinite(value)) return value;
    average = average * weight + (1 - weight) * value;
    count += 1;
    return average / (1 - weight ** count);
  });
}

// step → the value of a logged series ({step, last}) at that step: the logged value at a logged
// step, linear between logged steps and beyond them along the nearest two (at least `floor`);
// null for a series of one point at any other step. Null when the series has no number.
export function stepScale(series, floor = -Infinity) {
  const steps = [];
  const values = [];
  series.step.forEach((step, i) => {
    const value = series.last[i];
    if (typeof value !== "number" || !Number.isFinite(value)) return;
    if (steps.length && step <= steps[steps.length - 1]) return;
    steps.push(step);
    values.push(value);
  });
  if (!steps.length) return null;
  return (step) => {
    if (typeof step !== "number") return null;
    let low = 0;
    let high = steps.length - 1;
    while (low < high) { // the first logged step >= step
      const middle = (low + high) >> 1;
      if (steps[middle] < step) low = middle + 1; else high = middle;
    }
    if (steps[low] === step) return values[low];
    if (steps.length < 2) return null;
    const right = Math.min(steps.length - 1, Math.max(1, low));
    const left = right - 1;
    const value = values[left] + (values[right] - values[left]) * (step - steps[left]) / (steps[right] - steps[left]);
    return Math.max(floor, value);
  };
}

// The x axes the metric charts may use for a run: {step, wall, epoch}, each {title, map} (map:
// step → x, null for step itself) or {why} when the run cannot have it.
export function metricAxes(metrics, run) {
  const logged = (field) => metrics.get("metrics", field) || metrics.get("eval", field);
  const wallSeries = logged("wall_time_s");
  const wall = wallSeries && stepScale(wallSeries, 0);
  const perEpoch = Number(run?.settings?.steps_per_epoch ?? run?.config?.steps_per_epoch);
  const epochSeries = logged("epoch");
  let epoch = null;
  if (Number.isFinite(perEpoch) && perEpoch > 0) epoch = (step) => (typeof step === "number" ? step / perEpoch : null);
  else if (epochSeries) epoch = stepScale(epochSeries, 0);
  return {
    step: { title: "step", map: null },
    wall: wall ? { title: "wall time (s since start)", map: wall }
      : { why: "This run logged no wall_time_s metric: its charts can only use steps or epochs." },
    epoch: epoch ? { title: "epoch", map: epoch }
      : { why: "This run logged no epoch metric and its settings give no steps per epoch." },
  };
}

// A metric chart ([traces, layout]) as the chart toolbar asks: its lines' x on `axis`
// (metricAxes), smoothed by `smoothing` with the raw line faint behind, the y axis logarithmic.
export function metricView([traces, chartLayout], { smoothing = 0, axis = null, log = false } = {}) {
  const map = axis && axis.map;
  const raws = [];
  const lines = traces.map((trace, index) => {
    if (trace.type !== "scatter") return trace;
    const colour = (trace.line && trace.line.color) || COLORWAY[index % COLORWAY.length];
    const drawn = { ...trace, x: map ? trace.x.map(map) : trace.x,
                    line: { ...trace.line, color: colour }, marker: { ...trace.marker, color: colour } };
    if (!(smoothing > 0)) return drawn;
    const group = `line-${index}`;
    raws.push({ ...drawn, name: `${trace.name} (raw)`, opacity: 0.25, showlegend: false, legendgroup: group });
    return { ...drawn, y: smooth(trace.y, smoothing), legendgroup: group };
  });
  const yaxis = { ...chartLayout.yaxis, type: log ? "log" : "linear" };
  if (log) delete yaxis.range; // a fixed range is in the units of a linear axis
  const xaxis = { ...(chartLayout.xaxis || BASE.xaxis), title: { text: axis ? axis.title : "step", standoff: 2 } };
  // A new axis or scale starts from its own range, not the zoom of the one before.
  const uirevision = `${axis ? axis.title : "step"}-${log}`;
  return [[...raws, ...lines], { ...chartLayout, xaxis, yaxis, uirevision }];
}

// Fields of `metrics` (a MetricSeries) not in the fixed charts: [{group, fields: [[type, field]]}],
// groups in name order.
export function extraGroups(metrics) {
  const groups = new Map();
  for (const type of Object.keys(metrics.types).sort()) {
    for (const field of metrics.fields(type).sort()) {
      if (KNOWN[type] && KNOWN[type].has(field)) continue;
      const group = metricGroup(field);
      if (!groups.has(group)) groups.set(group, []);
      groups.get(group).push([type, field]);
    }
  }
  return [...groups.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([group, fields]) => ({ group, fields }));
}

// A metric's unit, from its name's suffix (`wall_time_s`: seconds): [name without it, unit].
const UNIT_SUFFIXES = [["_ms", "ms"], ["_s", "s"]];
export function metricUnit(field) {
  for (const [suffix, unit] of UNIT_SUFFIXES) {
    if (field.endsWith(suffix) && field.length > suffix.length) return [field.slice(0, -suffix.length), unit];
  }
  return [field, null];
}
const MINUTES_FROM_S = 600; // a time in seconds that reaches 10 minutes is charted in minutes

// One chart of an extra group: a line per field (the event type named where it is `eval`).
// A group whose fields share a unit says it on its axis ("wall time (s)"; minutes once the
// times reach MINUTES_FROM_S).
export function extraChart(metrics, { group, fields }) {
  const seriesOf = ([type, field]) => metrics.get(type, field);
  const { unit, scaled } = shownUnit(fields.map(([, field]) => field), fields.map(seriesOf));
  const traces = fields.map((spec) => {
    const [type, field] = spec;
    return line(type === "eval" ? `${field} (eval)` : field, scaled(seriesOf(spec)), { mode: "lines+markers" });
  });
  if (!unit) return [traces, layout(group, group)];
  // One field: its own words ("wall time"); several: the group's.
  const words = fields.length === 1 ? metricUnit(fields[0][1])[0].replaceAll("_", " ") : group;
  return [traces, layout(words, `${words} (${unit})`)];
}

// The unit fields named with one (`_s`, `_ms`) share, as shown (seconds reaching
// MINUTES_FROM_S in minutes), and `scaled(series)` giving a series in it; unit null otherwise.
function shownUnit(fields, seriesList) {
  const units = new Set(fields.map((field) => metricUnit(field)[1]));
  const unit = units.size === 1 ? [...units][0] : null;
  let scale = 1;
  let shown = unit;
  if (unit === "s") {
    const highest = Math.max(0, ...seriesList.flatMap((series) => (series?.last || [])
      .filter((value) => typeof value === "number" && Number.isFinite(value))));
    if (highest >= MINUTES_FROM_S) { scale = 60; shown = "min"; }
  }
  const scaled = (series) => (series && scale !== 1
    ? { step: series.step, last: Array.from(series.last, (value) => (typeof value === "number" ? value / scale : value)) }
    : series);
  return { unit: shown, scaled };
}

// The fixed charts of the run view, from MetricSeries + RewireSeries. `lossTitle` names the
// loss's unit where it is known (the built-in loop's cross-entropy).
export function runCharts(metrics, rewires, palette, { lossTitle = "loss" } = {}) {
  const m = (field) => metrics.get("metrics", field);
  const e = (field) => metrics.get("eval", field);
  const totals = rewires.totals();
  const charts = {
    loss: [[
      line("train loss (running)", m("loss"), { line: { color: COLOURS.running } }),
      line("train loss", e("train_loss"), { mode: "lines+markers" }),
      line("test loss", e("test_loss"), { mode: "lines+markers" }),
      // Logged by a script with rec.log (metrics events) rather than rec.eval.
      ...logged(m, ["train_loss", "test_loss"]),
    ], layout("Loss", lossTitle)],
    accuracy: [[
      line("train acc. (running)", m("accuracy"), { line: { color: COLOURS.running } }),
      line("train accuracy", e("train_accuracy"), { mode: "lines+markers" }),
      line("test accuracy", e("test_accuracy"), { mode: "lines+markers" }),
      ...logged(m, ["train_accuracy", "test_accuracy"]),
    ], layout("Accuracy", "accuracy (share)",
              { yaxis: { title: { text: "accuracy (share)" }, range: [0, 1.02], automargin: true } })],
    density: densityChart(metrics, rewires),
    itop: [[line("ITOP rate", m("itop_rate"), { line: { color: COLOURS.itop } })],
      layout("ITOP rate (ever active)", "share of all connections")],
    turnover: [[
      { type: "bar", name: "added", x: rewires.step, y: totals.added, marker: { color: palette.added } },
      { type: "bar", name: "removed", x: rewires.step, y: totals.removed.map((v) => -v),
        marker: { color: palette.removed }, customdata: totals.removed,
        hovertemplate: "removed %{customdata}<extra></extra>" },
      { type: "scatter", mode: "lines+markers", name: "turnover", x: rewires.step, y: rewires.turnover,
        yaxis: "y2", line: { color: COLOURS.whole } },
    ], layout("Added / removed per rewire", "connections", {
      barmode: "relative", margin: { ...BASE.margin, r: 56 },
      yaxis2: { title: { text: "turnover (added / active)" }, overlaying: "y", side: "right", rangemode: "tozero", showgrid: false,
                tickformat: ".2f", nticks: 4 },
    })],
  };
  return charts;
}

// Readable with any number of layers: one row per layer (a layer × rewire heatmap of density)
// under the global density line, instead of one legend entry per layer.
function densityChart(metrics, rewires) {
  const names = rewires.names.map((name, index) => `${index}: ${plain(name)}`);
  const z = rewires.names.map((_, index) => rewires.density(index));
  const global = metrics.get("metrics", "density");
  const traces = [
    { type: "heatmap", x: rewires.step, y: names, z, colorscale: "Viridis", zmin: 0, yaxis: "y",
      colorbar: { title: { text: "density (share)" }, thickness: 10, len: 0.7, y: 0.35 },
      hovertemplate: "%{y}<br>step %{x}: density %{z:.4f}<extra></extra>", name: "per layer" },
    line("global density", global, { yaxis: "y2", line: { color: COLOURS.whole }, fill: "tozeroy",
                                      fillcolor: "rgba(17, 17, 17, 0.25)",
                                      hovertemplate: "step %{x}: global density %{y:.2%}<extra></extra>" }),
  ];
  const rowsHigh = Math.max(1, names.length);
  // The global density on its whole scale, 0 to 1 (a fitted range made a constant density, what
  // every rewirer keeps, look like a swing, and Plotly's own range put it on −0.5…1), drawn as
  // a filled level and said in words: "global density 10.0%" (or its range where it moves).
  const values = global ? Array.from(global.last).filter((value) => typeof value === "number" && Number.isFinite(value)) : [];
  const low = values.length ? Math.min(...values) : null;
  const high = values.length ? Math.max(...values) : null;
  const percent = (value) => `${(100 * value).toFixed(1)}%`;
  const globalText = low === null ? "" : percent(low) === percent(high)
    ? `global density ${percent(high)}` : `global density ${percent(low)}–${percent(high)}`;
  return [traces, layout(globalText ? `Density per layer · ${globalText}` : "Density per layer", "", {
    height: Math.min(900, Math.max(320, 220 + 9 * rowsHigh)), // at least its box (.chart-wide)
    showlegend: false,
    margin: { ...BASE.margin, l: 120, b: 40 },
    yaxis: { domain: [0, 0.68], autorange: "reversed", automargin: true, tickfont: { size: 9 },
             ...(rowsHigh > 40 ? { showticklabels: true, nticks: 40 } : {}) },
    yaxis2: { domain: [0.74, 1], title: { text: "global (share)", font: { size: 11 } }, automargin: true,
              range: [0, 1.05], tickvals: [0, 0.5, 1], zeroline: false },
  })];
}

// Every metric of the compare view: [key, title, y title, (run) → {x, y}].
export const COMPARE_METRICS = [
  ["train_loss_running", "Train loss (running)", "loss", (r) => r.metrics.get("metrics", "loss")],
  ["train_loss", "Train loss", "loss", (r) => r.metrics.get("eval", "train_loss")],
  ["test_loss", "Test loss", "loss", (r) => r.metrics.get("eval", "test_loss")],
  ["train_accuracy", "Train accuracy", "accuracy", (r) => r.metrics.get("eval", "train_accuracy")],
  ["test_accuracy", "Test accuracy", "accuracy", (r) => r.metrics.get("eval", "test_accuracy")],
  ["density", "Global density", "share active", (r) => r.metrics.get("metrics", "density")],
  ["itop_rate", "ITOP rate", "share ever active", (r) => r.metrics.get("metrics", "itop_rate")],
  ["turnover", "Turnover per rewire", "added / active",
    (r) => ({ step: r.rewires.step, last: r.rewires.turnover })],
  ["added", "Added per rewire", "connections", (r) => ({ step: r.rewires.step, last: r.rewires.totals().added })],
];

// Compare: one chart per extra metric field any compared run logged, a line per run.
export function compareExtraFields(runs) {
  const fields = new Map();
  for (const run of runs) {
    for (const { fields: list } of extraGroups(run.metrics)) {
      for (const [type, field] of list) fields.set(`${type}:${field}`, [type, field]);
    }
  }
  return [...fields.values()].sort((a, b) => (a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
}

// A compared run ({ id, name, colour, metrics, rewires }) is drawn in its own colour and legend
// group in every chart (chart_style.js runStyle).
export function compareExtraChart([type, field], runs, groups = []) {
  const { unit, scaled } = shownUnit([field], runs.map((run) => run.metrics.get(type, field)));
  const traces = groupedTraces(runs, groups, (run) => scaled(run.metrics.get(type, field)));
  if (!unit) return [traces, layout(type === "eval" ? `${field} (eval)` : field, metricGroup(field))];
  // A field with a unit in its name: its words and the unit ("wall time (s)"), as the run view.
  const words = metricUnit(field)[0].replaceAll("_", " ");
  return [traces, layout(type === "eval" ? `${words} (eval)` : words, `${words} (${unit})`)];
}

// `groups`: lists of runs (each ≥ 2) drawn as one mean line with a ±1 s.d. band (the runs that
// differ only in their seed, compare_view.js seedGroups); the other runs as their own lines.
export function compareChart(key, runs, groups = []) {
  const [, title, yTitle, pick] = COMPARE_METRICS.find((metric) => metric[0] === key);
  return [groupedTraces(runs, groups, pick), layout(title, yTitle)];
}

function groupedTraces(runs, groups, pick) {
  const grouped = new Set(groups.flat());
  const traces = [];
  for (const group of groups) traces.push(...bandTraces(group, pick));
  for (const run of runs) {
    if (grouped.has(run)) continue;
    const series = pick(run);
    const count = series ? series.step.length : 0;
    traces.push(runStyle(run, line(run.name, series, { mode: count < 40 ? "lines+markers" : "lines" })));
  }
  return traces;
}

// A group's mean and sample standard deviation at the steps every member logged (runs of one
// config log at the same steps; nothing is interpolated), drawn in its first run's colour.
export function groupSeries(series) {
  const present = series.filter(Boolean);
  if (present.length !== series.length || !present.length) return null;
  const maps = present.map((one) => new Map(one.step.map((step, i) => [step, one.last[i]])));
  const steps = present[0].step.filter((step) => maps.every((map) => Number.isFinite(map.get(step))));
  const mean = [];
  const sd = [];
  for (const step of steps) {
    const values = maps.map((map) => map.get(step));
    const average = values.reduce((sum, value) => sum + value, 0) / values.length;
    const spread = values.reduce((sum, value) => sum + (value - average) ** 2, 0) / Math.max(1, values.length - 1);
    mean.push(average);
    sd.push(Math.sqrt(spread));
  }
  return { step: steps, mean, sd };
}

function bandTraces(group, pick) {
  const first = group[0];
  const label = `${first.name} and ${group.length - 1} more: mean of ${group.length} seeds`;
  const stats = groupSeries(group.map(pick));
  if (!stats || !stats.step.length) return [];
  const upper = stats.mean.map((value, i) => value + stats.sd[i]);
  const lower = stats.mean.map((value, i) => value - stats.sd[i]);
  const band = runStyle(first, {
    type: "scatter", mode: "lines", name: plain(`${label} ± 1 s.d.`), showlegend: false, hoverinfo: "skip",
    x: [...stats.step, ...[...stats.step].reverse()], y: [...upper, ...lower.reverse()],
    fill: "toself", opacity: 0.25, line: { width: 0 }, meta: { seedGroup: group.map((run) => run.id), band: true },
  });
  const mean = runStyle(first, line(label, { step: stats.step, last: stats.mean },
                                    { mode: stats.step.length < 40 ? "lines+markers" : "lines", meta: { seedGroup: group.map((run) => run.id) },
                                      customdata: stats.sd,
                                      hovertemplate: "%{y:.4g} ± %{customdata:.2g} at step %{x}<extra>%{fullData.name}</extra>" }));
  return [band, mean];
}

// Draws [traces, layout] into div, with the scrubber marker at x = `step` (in the chart's x units:
// a wall time or an epoch where the chart shows those). `spec` is that pair or a function
// making it: when `revision` (everything drawn but the marker) is the one already drawn, only the
// marker moves (a relayout of the shapes, ~1 ms) and `spec` is not even built — scrubbing a long
// run re-diffed every chart's arrays (20-80 ms each) on every position.
// `revision` changes whenever the data did (the arrays may grow in place: Plotly compares it).
export function drawChart(div, spec, step, revision) {
  if (!plotlyNow()) { // the newest arguments are drawn once the library is there
    const waiting = Boolean(div.sparsescopeWaiting);
    div.sparsescopeWaiting = { spec, step, revision };
    if (waiting) return Promise.resolve(div);
    return plotly().then(() => {
      const latest = div.sparsescopeWaiting;
      div.sparsescopeWaiting = null;
      return latest ? drawChart(div, latest.spec, latest.step, latest.revision) : div;
    }).catch((error) => { div.dataset.error = error.message; return div; });
  }
  const drawn = div.sparsescopeChart;
  const at = step === undefined ? null : step;
  if (drawn && drawn.revision === revision && div.layout) {
    if (drawn.step === at) return Promise.resolve(div);
    drawn.step = at;
    return relayout(div, { shapes: stepMarker(at) });
  }
  const [traces, chartLayout] = typeof spec === "function" ? spec() : spec;
  const empty = !hasPoints(traces);
  const withMarker = { ...chartLayout, shapes: stepMarker(at), datarevision: revision,
                       uirevision: chartLayout.uirevision ?? "keep",
                       annotations: empty ? [WAITING] : [] };
  if (empty) {
    withMarker.xaxis = { ...(chartLayout.xaxis || BASE.xaxis), visible: false };
    withMarker.yaxis = { ...(chartLayout.yaxis || {}), visible: false };
  }
  div.dataset.empty = String(empty);
  div.sparsescopeChart = { revision, step: at };
  return react(div, traces, withMarker, PLOT_CONFIG);
}

// The median of a list of numbers (null for none).
function median(values) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

// Which changes are outliers: |change − median| > 3·MAD (the median absolute deviation). With
// a MAD of 0 (most changes equal) nothing is: "3 × 0" would flag every other value.
export function responseOutliers(changes) {
  const centre = median(changes);
  const spread = median(changes.map((change) => Math.abs(change - centre)));
  return changes.map((change) => spread > 0 && Math.abs(change - centre) > 3 * spread);
}

// The rewire-response chart (under the loss chart): the metric's change across each rewire
// (`/rewire-response`: mean over the window after − before), a bar at each rewire's step, the
// outliers in their own colour.
export function rewireResponseChart(answer, palette) {
  const rows = answer ? answer.rewires : [];
  const metric = answer ? answer.metric : "loss";
  const outlier = responseOutliers(rows.map((row) => row.change));
  const bars = (flag, name, colour) => {
    const picked = rows.filter((_, i) => outlier[i] === flag);
    return {
      type: "bar", name, x: picked.map((row) => row.step), y: picked.map((row) => row.change),
      marker: { color: colour, line: { color: colour, width: 1 } },
      customdata: picked.map((row) => [row.rewire, row.before, row.after]),
      hovertemplate: "rewire %{customdata[0]} at step %{x}<br>before %{customdata[1]:.4g}, after " +
        "%{customdata[2]:.4g}<br>change %{y:.4g}<extra></extra>",
    };
  };
  const traces = [bars(false, "change", COLOURS.response), bars(true, "outlier (> 3 MAD)", palette.removed)];
  return [traces, layout(`Rewire response: mean ${metric} after − before`, `Δ mean ${metric}`, {
    bargap: 0.2, showlegend: true, margin: { ...BASE.margin, b: 56 },
    legend: { orientation: "h", y: -0.42, font: { size: 11 } },
  })];
}
