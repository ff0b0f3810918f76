// Metric charts of one run, and the same metrics overlaid for several runs (Compare).
//
// Every name that reaches Plotly (run, layer, metric) goes through `plain` first: Plotly renders
// a subset of HTML in titles, legends and hover labels.
import { plain } from "./text.js";

const CONFIG = { displayModeBar: false, responsive: true };
const BASE = {
  margin: { l: 52, r: 16, t: 30, b: 64 },
  legend: { orientation: "h", y: -0.3, font: { size: 11 } },
  paper_bgcolor: "rgba(0,0,0,0)",
  xaxis: { title: { text: "step", standoff: 2 }, zeroline: false },
};
const WAITING = { text: "waiting for data", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5,
                  font: { size: 14, color: "#5f6b7a" } };

function layout(title, yTitle, extra = {}) {
  // automargin: long tick labels (densities like 0.09994) push the axis title out instead of
  // printing over it.
  return { ...BASE, title: { text: plain(title), font: { size: 13 } },
           yaxis: { title: { text: plain(yTitle) }, automargin: true }, ...extra };
}

function marker(step) {
  return step === null || step === undefined ? [] : [{
    type: "line", xref: "x", yref: "paper", x0: step, x1: step, y0: 0, y1: 1,
    line: { color: "#f59e0b", width: 1.5, dash: "dot" },
  }];
}

const line = (name, series, extra = {}) => ({
  type: "scatter", mode: "lines", name: plain(name), x: series ? series.step : [], y: series ? series.last : [], ...extra,
});

const hasPoints = (traces) => traces.some((trace) => trace.x && trace.x.length > 0);

// The fixed charts of the run view, from MetricSeries + RewireSeries; `step` draws the
// scrubber's position as a dotted line.
export function runCharts(metrics, rewires, palette) {
  const m = (field) => metrics.get("metrics", field);
  const e = (field) => metrics.get("eval", field);
  const totals = rewires.totals();
  const charts = {
    loss: [[
      line("train loss (running)", m("loss"), { line: { color: "#94a3b8" } }),
      line("train loss", e("train_loss"), { mode: "lines+markers" }),
      line("test loss", e("test_loss"), { mode: "lines+markers" }),
    ], layout("Loss", "cross-entropy")],
    accuracy: [[
      line("train acc. (running)", m("accuracy"), { line: { color: "#94a3b8" } }),
      line("train accuracy", e("train_accuracy"), { mode: "lines+markers" }),
      line("test accuracy", e("test_accuracy"), { mode: "lines+markers" }),
    ], layout("Accuracy", "accuracy", { yaxis: { title: { text: "accuracy" }, range: [0, 1.02], automargin: true } })],
    density: densityChart(metrics, rewires),
    itop: [[line("ITOP rate", m("itop_rate"), { line: { color: "#7c3aed" } })],
      layout("ITOP rate (ever active)", "share of all connections")],
    turnover: [[
      { type: "bar", name: "added", x: rewires.step, y: totals.added, marker: { color: palette.added } },
      { type: "bar", name: "removed", x: rewires.step, y: totals.removed.map((v) => -v),
        marker: { color: palette.removed }, customdata: totals.removed,
        hovertemplate: "removed %{customdata}<extra></extra>" },
      { type: "scatter", mode: "lines+markers", name: "turnover", x: rewires.step, y: rewires.turnover,
        yaxis: "y2", line: { color: "#111" } },
    ], layout("Added / removed per rewire", "connections", {
      barmode: "relative", margin: { ...BASE.margin, r: 56 },
      yaxis2: { title: { text: "turnover" }, overlaying: "y", side: "right", rangemode: "tozero", showgrid: false,
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
      colorbar: { title: { text: "density" }, thickness: 10, len: 0.7, y: 0.35 },
      hovertemplate: "%{y}<br>step %{x}: density %{z:.4f}<extra></extra>", name: "per layer" },
    line("global density", global, { yaxis: "y2", line: { color: "#111" } }),
  ];
  const rowsHigh = Math.max(1, names.length);
  return [traces, layout("Density per layer", "", {
    height: Math.min(900, 220 + 9 * rowsHigh),
    showlegend: false,
    margin: { ...BASE.margin, l: 120, b: 40 },
    yaxis: { domain: [0, 0.72], autorange: "reversed", automargin: true, tickfont: { size: 9 },
             ...(rowsHigh > 40 ? { showticklabels: true, nticks: 40 } : {}) },
    yaxis2: { domain: [0.78, 1], title: { text: "global", font: { size: 11 } }, automargin: true },
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

export function compareChart(key, runs) {
  const [, title, yTitle, pick] = COMPARE_METRICS.find((metric) => metric[0] === key);
  const traces = runs.map((run) => {
    const series = pick(run);
    const count = series ? series.step.length : 0;
    return line(run.name, series, { mode: count < 40 ? "lines+markers" : "lines" });
  });
  return [traces, layout(title, yTitle)];
}

// Draws [traces, layout] into div, with the scrubber marker; one Plotly.react per call.
// `revision` changes whenever the data did (the arrays may grow in place: Plotly compares it).
export function drawChart(div, [traces, chartLayout], step, revision) {
  const empty = !hasPoints(traces);
  const withMarker = { ...chartLayout, shapes: marker(step), datarevision: revision, uirevision: "keep",
                       annotations: empty ? [WAITING] : [] };
  if (empty) {
    withMarker.xaxis = { ...(chartLayout.xaxis || BASE.xaxis), visible: false };
    withMarker.yaxis = { ...(chartLayout.yaxis || {}), visible: false };
  }
  div.dataset.empty = String(empty);
  return Plotly.react(div, traces, withMarker, CONFIG);
}
