// Drawing one layer's connectivity as a Plotly trace (never WebGL: headless chromium has none).
//
// Connections mode: an `image` trace whose source is a bitmap with one pixel per connection
// (kept, inactive, and this rewire's added and removed), hover read back from the mask.
// Density mode: a `heatmap` of the share of active connections per block, for layers of any
// size up to 4096 × 4096 and beyond (at most MAX_BLOCKS × MAX_BLOCKS cells).

export const PALETTES = {
  standard: { label: "standard", inactive: "#eef1f4", kept: "#3d4a5a", added: "#2563eb", removed: "#dc2626" },
  // Okabe–Ito blue and orange: told apart with any red–green colour blindness.
  colorblind: { label: "colour-blind safe", inactive: "#eef1f4", kept: "#4b4b4b", added: "#0072b2", removed: "#e69f00" },
};
export const STATE_NAMES = ["inactive", "kept", "added", "removed"];
const MAX_BLOCKS = 128;
// Above this many connections the connections bitmap is no longer readable on screen: the panel
// starts in density mode (the user may still switch back).
export const AUTO_DENSITY_ABOVE = 2048 * 2048;
const PLOT_CONFIG = { displayModeBar: false, responsive: true };

function rgba32(hex) {
  const value = parseInt(hex.slice(1), 16);
  const r = (value >> 16) & 255;
  const g = (value >> 8) & 255;
  const b = value & 255;
  return ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0; // ImageData is RGBA bytes, little-endian
}

// State of one connection at the shown rewire: 0 inactive, 1 kept, 2 added, 3 removed.
export function connectionState(state, flat) {
  const { frame, mask } = state;
  if (contains(frame.added, flat)) return 2;
  if (contains(frame.removed, flat)) return 3;
  return mask[flat] ? 1 : 0;
}

function contains(sorted, value) {
  let lo = 0;
  let hi = sorted.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid] === value) return true;
    if (sorted[mid] < value) lo = mid + 1; else hi = mid - 1;
  }
  return false;
}

export function blockGeometry(rows, cols) {
  const block = Math.max(1, Math.ceil(Math.max(rows, cols) / MAX_BLOCKS));
  return { block, blockRows: Math.ceil(rows / block), blockCols: Math.ceil(cols / block) };
}

// Share of active connections per block, plus added/removed counts per block (this rewire).
export function blockDensity(layer, state) {
  const { rows, cols } = layer;
  const { block, blockRows, blockCols } = blockGeometry(rows, cols);
  const counts = new Float64Array(blockRows * blockCols);
  const colBlock = new Uint32Array(cols);
  for (let c = 0; c < cols; c++) colBlock[c] = (c / block) | 0;
  const mask = state.mask;
  for (let r = 0; r < rows; r++) {
    const base = ((r / block) | 0) * blockCols;
    const offset = r * cols;
    for (let c = 0; c < cols; c++) if (mask[offset + c]) counts[base + colBlock[c]] += 1;
  }
  const added = new Uint32Array(blockRows * blockCols);
  const removed = new Uint32Array(blockRows * blockCols);
  const tally = (list, into) => {
    for (let i = 0; i < list.length; i++) {
      const flat = list[i];
      into[((flat / cols / block) | 0) * blockCols + colBlock[flat % cols]] += 1;
    }
  };
  tally(state.frame.added, added);
  tally(state.frame.removed, removed);
  const z = [];
  const customdata = [];
  for (let br = 0; br < blockRows; br++) {
    const height = Math.min(block, rows - br * block);
    const zRow = new Array(blockCols);
    const cRow = new Array(blockCols);
    for (let bc = 0; bc < blockCols; bc++) {
      const width = Math.min(block, cols - bc * block);
      const index = br * blockCols + bc;
      zRow[bc] = counts[index] / (height * width);
      cRow[bc] = [br * block + height - 1, bc * block + width - 1, added[index], removed[index], counts[index]];
    }
    z.push(zRow);
    customdata.push(cRow);
  }
  return { z, customdata, block, blockRows, blockCols };
}

export class LayerPanel {
  constructor(container, layer, { title = null, id = null } = {}) {
    this.layer = layer;
    this.titlePrefix = title;
    this.root = document.createElement("figure");
    this.root.className = "panel heatmap-panel";
    this.plot = document.createElement("div");
    this.plot.className = "heatmap";
    if (id) this.plot.id = id;
    this.plot.dataset.layer = layer.name;
    this.plot.setAttribute("role", "img");
    this.plot.setAttribute("aria-label", `connections of ${layer.name} (${layer.rows} outputs × ${layer.cols} inputs)`);
    this.readout = document.createElement("figcaption");
    this.readout.className = "readout";
    this.readout.textContent = "hover a cell for its units and state";
    this.root.append(this.plot, this.readout);
    container.append(this.root);
    this.canvas = document.createElement("canvas");
    this.canvas.width = layer.cols;
    this.canvas.height = layer.rows;
    this.context = this.canvas.getContext("2d");
    this.image = null;
    this.state = null;
    this.mode = null;
    this.hooked = false;
  }

  // Draws the layer at `state` (from LayerHistory.state). Returns Plotly's promise.
  draw(state, mode, palette) {
    this.state = state;
    const layer = this.layer;
    const step = state ? state.frame.step : null;
    const active = state ? state.active : 0;
    const density = layer.size ? active / layer.size : 0;
    const head = this.titlePrefix ? `${this.titlePrefix} · ` : "";
    const title = `${head}${layer.name} · ${layer.rows}×${layer.cols} · ${active} active (${(100 * density).toFixed(1)}%) · step ${step ?? "–"}`;
    this.plot.dataset.step = String(step);
    this.plot.dataset.active = String(active);
    this.plot.dataset.mode = mode;
    if (state) {
      this.plot.dataset.added = String(state.frame.added.length);
      this.plot.dataset.removed = String(state.frame.removed.length);
    }
    const trace = !state ? { type: "heatmap", z: [[0]], showscale: false, hoverinfo: "skip" }
      : mode === "density" ? this.densityTrace(state) : this.bitmapTrace(state, palette);
    const layout = {
      title: { text: title, font: { size: 12 } },
      margin: { l: 48, r: 12, t: 30, b: 36 },
      xaxis: { title: { text: "input unit", standoff: 4 }, zeroline: false, showgrid: false },
      yaxis: { title: { text: "output unit", standoff: 4 }, autorange: "reversed", zeroline: false,
               showgrid: false, scaleanchor: false },
      uirevision: `${layer.name}-${mode}`,
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "#ffffff",
    };
    this.mode = mode;
    const done = Plotly.react(this.plot, [trace], layout, PLOT_CONFIG);
    if (!this.hooked) {
      this.hooked = true;
      this.plot.on("plotly_hover", (event) => this.hover(event));
    }
    return done;
  }

  bitmapTrace(state, palette) {
    const { rows, cols } = this.layer;
    if (!this.image) this.image = this.context.createImageData(cols, rows);
    const pixels = new Uint32Array(this.image.data.buffer);
    const inactive = rgba32(palette.inactive);
    const kept = rgba32(palette.kept);
    const mask = state.mask;
    for (let i = 0; i < mask.length; i++) pixels[i] = mask[i] ? kept : inactive;
    const added = rgba32(palette.added);
    const removed = rgba32(palette.removed);
    const { frame } = state;
    for (let i = 0; i < frame.added.length; i++) pixels[frame.added[i]] = added;
    for (let i = 0; i < frame.removed.length; i++) pixels[frame.removed[i]] = removed;
    this.context.putImageData(this.image, 0, 0);
    return { type: "image", source: this.canvas.toDataURL("image/png"), x0: 0, y0: 0, dx: 1, dy: 1,
             hoverinfo: "none", zsmooth: false };
  }

  densityTrace(state) {
    const blocks = blockDensity(this.layer, state);
    this.blocks = blocks;
    const x = Array.from({ length: blocks.blockCols }, (_, i) => i * blocks.block);
    const y = Array.from({ length: blocks.blockRows }, (_, i) => i * blocks.block);
    return {
      type: "heatmap", z: blocks.z, x, y, customdata: blocks.customdata, zmin: 0,
      colorscale: "Viridis", colorbar: { title: { text: "density" }, thickness: 10 },
      xgap: 0, ygap: 0,
      hovertemplate: "out %{y}–%{customdata[0]}, in %{x}–%{customdata[1]}<br>density %{z:.3f}" +
        " (%{customdata[4]} active)<br>added %{customdata[2]}, removed %{customdata[3]}<extra></extra>",
    };
  }

  hover(event) {
    const point = event.points && event.points[0];
    if (!point || !this.state) return;
    if (this.mode === "density") {
      const [rowEnd, colEnd, added, removed, count] = point.customdata;
      this.readout.textContent = `block out ${point.y}–${rowEnd}, in ${point.x}–${colEnd}: density ` +
        `${Number(point.z).toFixed(3)} (${count} active), added ${added}, removed ${removed}`;
      return;
    }
    const row = Math.round(point.y);
    const col = Math.round(point.x);
    if (row < 0 || col < 0 || row >= this.layer.rows || col >= this.layer.cols) return;
    const name = STATE_NAMES[connectionState(this.state, row * this.layer.cols + col)];
    this.readout.textContent = `out ${row}, in ${col}: ${name}`;
    this.readout.dataset.state = name;
  }

  remove() {
    Plotly.purge(this.plot);
    this.root.remove();
  }
}

// Active connections per input pixel: column sums of the first layer's mask, shown as the input
// image (MLP on images), the kernel window (CNN: summed over channels) or one row of features.
export function inputGeometry(meta, layer) {
  const image = meta && meta.image_shape;
  if (layer.shape.length === 4) {
    const [, channels, kh, kw] = layer.shape;
    return { height: kh, width: kw, channels, label: "kernel position" };
  }
  if (image && layer.cols % (image[0] * image[1]) === 0) {
    const channels = layer.cols / (image[0] * image[1]);
    return { height: image[0], width: image[1], channels, label: "input pixel" };
  }
  return { height: 1, width: layer.cols, channels: 1, label: "input feature" };
}

export function inputCounts(layer, state, geometry) {
  const { rows, cols } = layer;
  const sums = new Uint32Array(cols);
  const mask = state.mask;
  for (let r = 0; r < rows; r++) {
    const offset = r * cols;
    for (let c = 0; c < cols; c++) sums[c] += mask[offset + c];
  }
  const plane = geometry.height * geometry.width;
  const z = [];
  for (let h = 0; h < geometry.height; h++) {
    const row = new Array(geometry.width).fill(0);
    for (let w = 0; w < geometry.width; w++) {
      for (let ch = 0; ch < geometry.channels; ch++) row[w] += sums[ch * plane + h * geometry.width + w] || 0;
    }
    z.push(row);
  }
  return z;
}

export class InputPanel {
  constructor(container, meta, layer) {
    this.layer = layer;
    this.geometry = inputGeometry(meta, layer);
    this.root = document.createElement("figure");
    this.root.className = "panel input-panel";
    this.plot = document.createElement("div");
    this.plot.className = "heatmap";
    this.plot.id = "input-view";
    this.plot.setAttribute("role", "img");
    this.plot.setAttribute("aria-label", `active connections of ${layer.name} per ${this.geometry.label}`);
    const caption = document.createElement("figcaption");
    caption.className = "readout";
    caption.textContent = `active connections of ${layer.name} per ${this.geometry.label}` +
      ` (column sums of its mask; bright = many)`;
    this.root.append(this.plot, caption);
    container.append(this.root);
  }

  draw(state) {
    if (!state) return Promise.resolve();
    const z = inputCounts(this.layer, state, this.geometry);
    const { height, width, label } = this.geometry;
    let total = 0;
    for (const row of z) for (const value of row) total += value;
    this.plot.dataset.total = String(total);
    this.plot.dataset.step = String(state.frame.step);
    const trace = {
      type: "heatmap", z, colorscale: "Viridis", zmin: 0,
      colorbar: { title: { text: "active" }, thickness: 10 },
      hovertemplate: `${label} row %{y}, col %{x}<br>%{z} active connections<extra></extra>`,
    };
    const square = height > 1;
    const layout = {
      title: { text: `${this.layer.name} per ${label} (${height}×${width}) · step ${state.frame.step}`, font: { size: 12 } },
      margin: { l: 36, r: 12, t: 30, b: 30 },
      xaxis: { showgrid: false, zeroline: false, constrain: "domain" },
      yaxis: { autorange: "reversed", showgrid: false, zeroline: false,
               ...(square ? { scaleanchor: "x", constrain: "domain" } : { showticklabels: false }) },
      uirevision: "input",
      paper_bgcolor: "rgba(0,0,0,0)",
    };
    return Plotly.react(this.plot, [trace], layout, PLOT_CONFIG);
  }

  remove() {
    Plotly.purge(this.plot);
    this.root.remove();
  }
}
