// Metric charts of one run, and the same metrics overlaid for several runs (Compare).
const CONFIG = { displayModeBar: false, responsive: true };
const BASE = {
  margin: { l: 52, r: 16, t: 30, b: 64 },
  legend: { orientation: "h", y: -0.3, font: { size: 11 } },
  paper_bgcolor: "rgba(0,0,0,0)",
  xaxis: { title: { text: "step", standoff: 2 }, zeroline: false },
};

function layout(title, yTitle, extra = {}) {
  // automargin: long tick labels (densities like 0.09994) push the axis title out instead of
  // printing over it.
  return { ...BASE, title: { text: title, font: { size: 13 } }, yaxis: { title: { text: yTitle }, automargin: true },
           ...extra };
}

function marker(step) {
  return step === null || step === undefined ? [] : [{
    type: "line", xref: "x", yref: "paper", x0: step, x1: step, y0: 0, y1: 1,
    line: { color: "#f59e0b", width: 1.5, dash: "dot" },
  }];
}

const line = (name, x, y, extra = {}) => ({ type: "scatter", mode: "lines", name, x, y, ...extra });

// The five charts of the run view; `step` draws the scrubber's position as a dotted line.
export function runCharts(model, palette) {
  const m = model.metrics;
  const e = model.evals;
  const r = model.rewires;
  const density = Object.entries(m.layer).map(([name, s]) => line(name, s.step, s.value));
  density.push(line("global", m.step, m.density, { line: { dash: "dash", color: "#111" } }));
  return {
    loss: [[
      line("train loss (running)", m.step, m.loss, { line: { color: "#94a3b8" } }),
      line("train loss", e.step, e.train_loss, { mode: "lines+markers" }),
      line("test loss", e.step, e.test_loss, { mode: "lines+markers" }),
    ], layout("Loss", "cross-entropy")],
    accuracy: [[
      line("train acc. (running)", m.step, m.accuracy, { line: { color: "#94a3b8" } }),
      line("train accuracy", e.step, e.train_accuracy, { mode: "lines+markers" }),
      line("test accuracy", e.step, e.test_accuracy, { mode: "lines+markers" }),
    ], layout("Accuracy", "accuracy", { yaxis: { title: { text: "accuracy" }, range: [0, 1.02], automargin: true } })],
    density: [density, layout("Density per layer", "share active")],
    itop: [[line("ITOP rate", m.step, m.itop_rate, { line: { color: "#7c3aed" } })],
      layout("ITOP rate (ever active)", "share of all connections")],
    turnover: [[
      { type: "bar", name: "added", x: r.step, y: r.added, marker: { color: palette.added } },
      { type: "bar", name: "removed", x: r.step, y: r.removed.map((v) => -v), marker: { color: palette.removed },
        customdata: r.removed, hovertemplate: "removed %{customdata}<extra></extra>" },
      line("turnover", r.step, r.turnover, { yaxis: "y2", mode: "lines+markers", line: { color: "#111" } }),
    ], layout("Added / removed per rewire", "connections", {
      barmode: "relative", margin: { ...BASE.margin, r: 56 },
      yaxis2: { title: { text: "turnover" }, overlaying: "y", side: "right", rangemode: "tozero", showgrid: false,
                tickformat: ".2f", nticks: 4 },
    })],
  };
}

// Every metric of the compare view: [key, title, y title, (model) → {x, y}].
export const COMPARE_METRICS = [
  ["train_loss_running", "Train loss (running)", "loss", (m) => ({ x: m.metrics.step, y: m.metrics.loss })],
  ["train_loss", "Train loss", "loss", (m) => ({ x: m.evals.step, y: m.evals.train_loss })],
  ["test_loss", "Test loss", "loss", (m) => ({ x: m.evals.step, y: m.evals.test_loss })],
  ["train_accuracy", "Train accuracy", "accuracy", (m) => ({ x: m.evals.step, y: m.evals.train_accuracy })],
  ["test_accuracy", "Test accuracy", "accuracy", (m) => ({ x: m.evals.step, y: m.evals.test_accuracy })],
  ["density", "Global density", "share active", (m) => ({ x: m.metrics.step, y: m.metrics.density })],
  ["itop_rate", "ITOP rate", "share ever active", (m) => ({ x: m.metrics.step, y: m.metrics.itop_rate })],
  ["turnover", "Turnover per rewire", "added / active", (m) => ({ x: m.rewires.step, y: m.rewires.turnover })],
  ["added", "Added per rewire", "connections", (m) => ({ x: m.rewires.step, y: m.rewires.added })],
];

export function compareChart(key, models, step) {
  const [, title, yTitle, pick] = COMPARE_METRICS.find((metric) => metric[0] === key);
  const traces = models.map((model) => {
    const { x, y } = pick(model);
    return line(model.name, x, y, { mode: x.length < 40 ? "lines+markers" : "lines" });
  });
  return [traces, layout(title, yTitle, { shapes: marker(step) })];
}

// Draws [traces, layout] into div, with the scrubber marker; one Plotly.react per call.
export function drawChart(div, [traces, chartLayout], step, revision) {
  const withMarker = { ...chartLayout, shapes: marker(step), datarevision: revision, uirevision: "keep" };
  return Plotly.react(div, traces, withMarker, CONFIG);
}
