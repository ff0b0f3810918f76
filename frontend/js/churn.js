// Churn of one layer, the run view's topology section (topology.js): how often each position of
// the mask changed state from rewire 0 to the rewire on screen (the toggle distribution), the
// connections that changed at each rewire as a share of those active before it (the flip
// rate), and where the changes are (the
// churn map: mean state changes per position, one pixel per screen pixel at most, as the layer
// panels are fetched). From `GET /api/runs/{id}/churn` (docs/topology.md).
//
// The section decides when to draw (on screen, following the player); this part asks the server,
// keeps the decoded answers in a small LRU bounded by bytes (scrubbing back costs nothing) and
// says an answer it cannot draw (a 422's detail) as text where the charts were.
import { api } from "./api.js";
import { chartBase, chartTitle, MARGINS, PLOT_CONFIG, stepMarker } from "./chart_style.js";
import { decodeCounts, pixelRange } from "./codec.js";
import { purge, react } from "./plotly.js";
import * as urls from "./urls.js";

const KEEP_BYTES = 24 * 1024 * 1024; // decoded churn maps kept: ~25 full-width maps of a large layer
const MAX_GRID = 2048; // the server's bound on a view's rows and cols
const BASE = chartBase(MARGINS.topology, -0.25);
const CHARTS = [
  ["toggles", "Toggle distribution: positions by how often they changed state"],
  ["flip-rate", "Flip rate: connections changed at each rewire, per connection active before it"],
  ["churn-map", "Churn map: mean state changes per position"],
];

function layout(title, xTitle, yTitle, extra = {}) {
  return { ...BASE, title: chartTitle(title),
           xaxis: { title: { text: xTitle, standoff: 2 }, zeroline: false, automargin: true },
           yaxis: { title: { text: yTitle }, automargin: true }, ...extra };
}

// As the layer panels round their pixel counts: small resizes ask for (and reuse) the same map.
function quantise(pixels) {
  return pixels <= 64 ? pixels : pixels - (pixels % 16);
}

// A churn answer with its map decoded: `mapToggles` (state changes summed per pixel) and
// `mapPossible` (positions per pixel) as Uint32Array, gr × gc row-major.
export function decodeChurn(answer) {
  const [gr, gc] = answer.view.grid;
  const count = gr * gc;
  const mapToggles = decodeCounts(answer.view.toggles, answer.view.dtype, count);
  const mapPossible = decodeCounts(answer.view.possible, answer.view.dtype, count);
  return { ...answer, gr, gc, mapToggles, mapPossible, bytes: mapToggles.byteLength + mapPossible.byteLength };
}

// Mean state changes per position of each pixel (null where a pixel covers no position).
export function meanToggles(decoded) {
  const { gr, gc, mapToggles: toggles, mapPossible: possible } = decoded;
  const z = [];
  for (let i = 0; i < gr; i++) {
    const row = new Array(gc);
    for (let j = 0; j < gc; j++) {
      const at = i * gc + j;
      row[j] = possible[at] ? toggles[at] / possible[at] : null;
    }
    z.push(row);
  }
  return z;
}

// An ApiError's words: FastAPI's detail, a string or a list of { msg } for a refused query.
export function describe(error) {
  const detail = error?.detail;
  if (Array.isArray(detail) && detail.length) return detail.map((item) => item?.msg ?? String(item)).join("; ");
  return error?.message ?? String(error);
}

const fmt = (value, digits = 3) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));

export class ChurnPart {
  // prefix: the ids of its parts (`${prefix}-toggles`, `${prefix}-churn-map`, …); onChange: a
  // control changed (redraw).
  constructor(prefix, { onChange }) {
    this.prefix = prefix;
    this.cache = new Map(); // path -> decoded answer, least recently used first
    this.cachedBytes = 0;
    this.root = document.createElement("div");
    this.root.id = `${prefix}-churn`;
    this.root.className = "topology-churn";
    const heading = document.createElement("h4");
    heading.textContent = "Churn";
    const controls = document.createElement("div");
    controls.className = "topology-controls";
    this.scale = document.createElement("select");
    this.scale.id = `${prefix}-churn-scale`;
    this.scale.setAttribute("aria-label", "Toggle distribution: positions axis");
    // Most positions never change (count 0 dominates): log by default, or the rest is invisible.
    this.scale.append(new Option("log", "log"), new Option("linear", "linear"));
    this.scale.addEventListener("change", onChange);
    const label = document.createElement("label");
    label.append("Positions axis ", this.scale);
    controls.append(label);
    this.error = document.createElement("p");
    this.error.id = `${prefix}-churn-error`;
    this.error.className = "error-text";
    this.stats = document.createElement("p");
    this.stats.id = `${prefix}-churn-stats`;
    this.stats.className = "topology-stats-line";
    this.charts = document.createElement("div");
    this.charts.className = "charts";
    for (const [key, title] of CHARTS) {
      const div = document.createElement("div");
      div.className = "chart";
      div.id = `${prefix}-${key}`;
      div.setAttribute("role", "img");
      div.setAttribute("aria-label", title);
      this.charts.append(div);
    }
    this.root.append(heading, controls, this.error, this.stats, this.charts);
  }

  chart(key) {
    return document.getElementById(`${this.prefix}-${key}`);
  }

  clear() {
    this.cache.clear();
    this.cachedBytes = 0;
    delete this.root.dataset.step;
    delete this.root.dataset.rewire;
  }

  // The map's rows × cols: one per device pixel of the plot area, at most the layer's own size.
  grid(shape) {
    const [rows, cols] = shape;
    const div = this.chart("churn-map");
    const ratio = window.devicePixelRatio || 1;
    const margin = MARGINS.topology;
    const width = Math.max(16, Math.floor(((div.clientWidth || 420) - margin.l - margin.r - 60) * ratio)); // 60: colour bar
    const height = Math.max(16, Math.floor(((div.clientHeight || 290) - margin.t - margin.b) * ratio));
    const fit = (size, pixels) => Math.max(1, Math.min(size, MAX_GRID, quantise(pixels)));
    return [fit(rows, height), fit(cols, width)];
  }

  // The decoded churn of `layer` (index) at `step`, at the map's resolution; throws ApiError.
  async load(runId, layer, step) {
    const [rows, cols] = this.grid(layer.shape);
    const path = urls.churn(runId, { layer: layer.index, step, rows, cols });
    const hit = this.cache.get(path);
    if (hit) { this.cache.delete(path); this.cache.set(path, hit); return hit; }
    const decoded = decodeChurn(await api(path));
    this.cache.set(path, decoded);
    this.cachedBytes += decoded.bytes;
    while (this.cachedBytes > KEEP_BYTES && this.cache.size > 1) {
      const [oldest, entry] = this.cache.entries().next().value;
      this.cache.delete(oldest);
      this.cachedBytes -= entry.bytes;
    }
    return decoded;
  }

  // Said in place of the charts (the server's own words where it gave them).
  fail(error, step) {
    this.charts.hidden = true;
    for (const div of this.charts.querySelectorAll(".chart")) purge(div);
    this.stats.textContent = "";
    this.error.textContent = `churn: ${describe(error)}`;
    this.root.dataset.error = "true";
    this.root.dataset.step = String(step);
  }

  // Draws `churn` (decoded) with the scrubber's `step` marked; returns the charts' draws. The flip
  // rate runs to the rewire shown, on an axis to the run's `lastStep`: it grows as the player moves.
  draw(churn, step, lastStep = null) {
    this.error.textContent = "";
    delete this.root.dataset.error;
    this.charts.hidden = false;
    const log = this.scale.value === "log";
    const counts = churn.toggles.map((pair) => pair[0]);
    const positions = churn.toggles.map((pair) => pair[1]);
    const draws = [];
    const plot = (key, traces, chartLayout) => {
      draws.push(react(this.chart(key), traces, { ...chartLayout, uirevision: "keep" }, PLOT_CONFIG));
    };
    plot("toggles", [{
      type: "bar", name: "positions", x: counts, y: positions, marker: { color: "#3d4a5a" },
      hovertemplate: "changed state %{x} times: %{y} positions<extra></extra>",
    }], layout("Toggle distribution", "state changes since rewire 0", "positions", {
      yaxis: { title: { text: "positions" }, type: log ? "log" : "linear", automargin: true,
               ...(log ? { dtick: 1 } : {}) }, // log: powers of ten only
      xaxis: { title: { text: "state changes since rewire 0", standoff: 2 }, zeroline: false, automargin: true,
               ...(counts.length && counts[counts.length - 1] <= 12 ? { dtick: 1 } : {}) },
      bargap: 0.1,
    }));
    plot("flip-rate", [{
      type: "scatter", mode: "lines+markers", name: "flip rate", x: churn.flip_steps,
      y: churn.flip_rate.map((pair) => pair[1]), customdata: churn.flip_rate.map((pair) => pair[0]),
      marker: { size: 3 }, connectgaps: false,
      hovertemplate: "rewire %{customdata} (step %{x}): %{y:.4f}<extra></extra>",
    }], layout("Flip rate per rewire", "step", "changed ÷ active before", {
      shapes: stepMarker(step), showlegend: false,
      xaxis: { title: { text: "step", standoff: 2 }, zeroline: false, automargin: true,
               ...(lastStep > 0 ? { range: [0, lastStep * 1.02] } : {}) },
      yaxis: { title: { text: "changed ÷ active before" }, rangemode: "tozero", automargin: true },
    }));
    const [rows, cols] = churn.shape;
    const centre = (i, size, pixels) => { const [a, b] = pixelRange(i, size, pixels); return (a + b - 1) / 2; };
    plot("churn-map", [{
      type: "heatmap", z: meanToggles(churn), zmin: 0, zmax: Math.max(churn.view.max_mean || 0, 1e-6),
      x: Array.from({ length: churn.gc }, (_, j) => centre(j, cols, churn.gc)),
      y: Array.from({ length: churn.gr }, (_, i) => centre(i, rows, churn.gr)),
      colorscale: "Viridis", colorbar: { title: { text: "changes per position" }, thickness: 10 },
      hovertemplate: "output %{y}, input %{x}: %{z:.3f} state changes per position<extra></extra>",
    }], layout(`Churn map${churn.view.exact ? "" : ` (${churn.gr}×${churn.gc} pixels)`}`, "inputs", "output units", {
      xaxis: { title: { text: "inputs", standoff: 2 }, range: [-0.5, cols - 0.5], zeroline: false, showgrid: false, automargin: true },
      yaxis: { title: { text: "output units" }, range: [rows - 0.5, -0.5], zeroline: false, showgrid: false, automargin: true },
    }));
    this.stats.textContent = summary(churn);
    this.root.dataset.rewire = String(churn.rewire);
    return draws;
  }
}

// One line of numbers (set as text): how much of the layer moved, up to the rewire shown.
export function summary(churn) {
  const positions = churn.toggles.reduce((sum, [, count]) => sum + count, 0);
  const changes = churn.toggles.reduce((sum, [toggles, count]) => sum + toggles * count, 0);
  const moved = churn.toggles.reduce((sum, [toggles, count]) => sum + (toggles > 0 ? count : 0), 0);
  const most = Math.max(0, ...churn.toggles.filter(([, count]) => count > 0).map(([toggles]) => toggles));
  return `${churn.layer} from rewire 0 to rewire ${churn.rewire} (step ${churn.step}): ` +
    `${moved} of ${positions} positions changed state at least once (${fmt(positions ? moved / positions : null)}), ` +
    `${fmt(positions ? changes / positions : null)} changes per position on average, at most ${most}`;
}
