// The layer overview: one row per sparsified layer (name, shape, density, active, a sparkline of
// its density and turnover over the rewires) that jumps to a layer's panel or pins it on top.
//
// Sparklines are small canvases, not Plotly plots: fifty of them cost less than one chart.
import { COLOURS } from "./chart_style.js";

const SPARK_WIDTH = 120;
const SPARK_HEIGHT = 22;

export class LayerOverview {
  // onJump(index), onPin(index) are called from the rows' buttons.
  constructor(container, { onJump, onPin }) {
    this.container = container;
    this.onJump = onJump;
    this.onPin = onPin;
    this.rows = [];
  }

  // layers: the `/rewires` layers ({index, name, shape, weight_shape, kind, density, active}).
  layout(layers) {
    const table = document.createElement("table");
    table.className = "overview";
    table.id = "layer-overview-table";
    const head = table.createTHead().insertRow();
    for (const title of ["#", "layer", "shape", "density", "active", "density / turnover", ""]) {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = title;
      head.append(th);
    }
    const body = table.createTBody();
    this.rows = layers.map((layer) => {
      const row = body.insertRow();
      row.dataset.index = String(layer.index);
      const cells = [0, 1, 2, 3, 4, 5, 6].map(() => row.insertCell());
      cells[0].textContent = String(layer.index);
      const jump = document.createElement("button");
      jump.type = "button";
      jump.className = "link";
      jump.textContent = layer.name; // a name is data: textContent, never innerHTML
      jump.setAttribute("aria-label", `Go to layer ${layer.name}`);
      jump.addEventListener("click", () => this.onJump(layer.index));
      cells[1].append(jump);
      cells[2].textContent = (layer.weight_shape || layer.shape).join("×");
      cells[3].className = "number";
      cells[4].className = "number";
      const canvas = document.createElement("canvas");
      canvas.width = SPARK_WIDTH;
      canvas.height = SPARK_HEIGHT;
      canvas.className = "sparkline";
      canvas.setAttribute("aria-hidden", "true");
      cells[5].append(canvas);
      const pin = document.createElement("button");
      pin.type = "button";
      pin.textContent = "Pin";
      pin.setAttribute("aria-pressed", "false");
      pin.setAttribute("aria-label", `Pin layer ${layer.name}`);
      pin.addEventListener("click", () => this.onPin(layer.index));
      cells[6].append(pin);
      return { row, density: cells[3], active: cells[4], canvas, pin, size: layer.shape[0] * layer.shape[1] };
    });
    this.container.replaceChildren(table);
  }

  setPinned(index, pinned) {
    const entry = this.rows[index];
    if (!entry) return;
    entry.pin.setAttribute("aria-pressed", String(pinned));
    entry.pin.textContent = pinned ? "Unpin" : "Pin";
  }

  // Density and active count of each layer at the rewire on screen (newest bucket at or before).
  update(rewires, step) {
    let column = rewires.step.length - 1;
    if (step !== null) while (column > 0 && rewires.step[column] > step) column--;
    this.rows.forEach((entry, index) => {
      const active = column >= 0 ? rewires.active[index]?.[column] : null;
      entry.active.textContent = active === null || active === undefined ? "–" : String(active);
      entry.density.textContent = active === null || active === undefined ? "–"
        : `${(100 * active / Math.max(1, entry.size)).toFixed(1)}%`;
      drawSparkline(entry.canvas, rewires.density(index), rewires.added[index], rewires.active[index], column);
    });
  }

  highlight(index) {
    for (const entry of this.rows) entry.row.classList.toggle("current", Number(entry.row.dataset.index) === index);
  }
}

// Density as a line (scaled to its own range), turnover (added / active) as bars, the rewire on
// screen as a tick.
function drawSparkline(canvas, density, added, active, column) {
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  context.clearRect(0, 0, width, height);
  const count = density.length;
  if (count === 0) return;
  const x = (i) => (count === 1 ? width / 2 : (i / (count - 1)) * (width - 2) + 1);
  let turnoverMax = 0;
  const turnover = added.map((value, i) => {
    const share = active[i] ? value / active[i] : 0;
    if (share > turnoverMax) turnoverMax = share;
    return share;
  });
  context.fillStyle = "#93c5fd";
  for (let i = 0; i < count; i++) {
    if (!turnoverMax) break;
    const barHeight = (turnover[i] / turnoverMax) * (height - 2);
    context.fillRect(x(i) - 0.5, height - barHeight, 1, barHeight);
  }
  const finite = density.filter((value) => value !== null);
  if (finite.length) {
    const low = Math.min(...finite);
    const high = Math.max(...finite);
    const y = (value) => (high > low ? height - 2 - ((value - low) / (high - low)) * (height - 4) : height / 2);
    context.strokeStyle = "#1d2733";
    context.lineWidth = 1.2;
    context.beginPath();
    let started = false;
    density.forEach((value, i) => {
      if (value === null) return;
      if (started) context.lineTo(x(i), y(value)); else { context.moveTo(x(i), y(value)); started = true; }
    });
    context.stroke();
  }
  if (column >= 0) {
    context.fillStyle = COLOURS.marker;
    context.fillRect(x(column) - 1, 0, 2, height);
  }
}
