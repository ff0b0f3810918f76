// The look of the dashboard's Plotly plots, declared once: the config, margins, the title and
// legend fonts, the transparent paper, the scrubber's marker and the fixed colours. The metric
// charts (charts.js, also drawn by Compare), the topology section (topology.js) and the layer
// panels (heatmap.js) build their layouts from these.
import { plain } from "./text.js";

// No mode bar (the page has its own controls); plots follow their box's size.
export const PLOT_CONFIG = { displayModeBar: false, responsive: true };
// The page's background shows through.
export const PAPER_BACKGROUND = "rgba(0,0,0,0)";

export const MARGINS = {
  metric: { l: 52, r: 16, t: 30, b: 64 }, // metric charts: room for the legend under the axis
  topology: { l: 56, r: 16, t: 30, b: 48 },
  panel: { l: 48, r: 12, t: 8, b: 36 }, // layer panels: no title
};

export const COLOURS = {
  marker: "#f59e0b", // the scrubber's position, in charts and in the overview's sparklines
  running: "#94a3b8", // the running (per-step) train loss and accuracy, under the evaluated ones
  itop: "#7c3aed",
  whole: "#111", // the run-wide line over per-layer data (global density, turnover)
  waiting: "#5f6b7a", // "waiting for data"
  response: "#64748b", // the rewire-response chart's bars (its outliers take the palette's "removed")
};

// The shared part of a titled chart's layout: its margin, a horizontal legend at `legendY`
// (a fraction of the plot's height, below it when negative), the transparent paper.
export function chartBase(margin, legendY) {
  return { margin, legend: { orientation: "h", y: legendY, font: { size: 11 } }, paper_bgcolor: PAPER_BACKGROUND };
}

// A chart's title; names recorded by the run pass through `plain` (see text.js).
export function chartTitle(text) {
  return { text: plain(text), font: { size: 13 } };
}

// The scrubber's position as a dotted vertical line (none for a null step: following live).
export function stepMarker(step) {
  return step === null || step === undefined ? [] : [{
    type: "line", xref: "x", yref: "paper", x0: step, x1: step, y0: 0, y1: 1,
    line: { color: COLOURS.marker, width: 1.5, dash: "dot" },
  }];
}

// Compare: one colour per compared run, by its position in the compared list, the same in every
// chart, table and panel of the view (Okabe–Ito, told apart with the common colour-vision
// deficiencies; its yellow left out, unreadable on white, and its orange last: the scrubber's
// marker is orange). More runs than colours start over.
export const RUN_COLOURS = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#56b4e9", "#000000", "#e69f00"];

export function runColour(position) {
  return RUN_COLOURS[position % RUN_COLOURS.length];
}

// A compared run's look on one of its traces: its legend group (a click on the legend hides or
// shows the whole run) and its colour. `dash` tells apart several lines of one run in one chart;
// bars take the colour on their marker only.
export function runStyle(run, trace, dash = null) {
  const marker = { ...trace.marker, color: run.colour };
  if (trace.type === "bar") return { ...trace, legendgroup: run.id, marker };
  return { ...trace, legendgroup: run.id, marker,
           line: { ...trace.line, color: run.colour, ...(dash ? { dash } : {}) } };
}
