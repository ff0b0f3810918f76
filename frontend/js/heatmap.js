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
  const longest = Math.max(rows, cols);
  // Blocks of at least 4 × 4 once a layer is big enough: a 1 × 1 "density" is just the mask.
  const block = Math.max(1, Math.ceil(longest / MAX_BLOCKS), longest >= 32 ? 4 : 1);
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
  let highest = 0;
  for (let br = 0; br < blockRows; br++) {
    const height = Math.min(block, rows - br * block);
    const zRow = new Array(blockCols);
    const cRow = new Array(blockCols);
    for (let bc = 0; bc < blockCols; bc++) {
      const width = Math.min(block, cols - bc * block);
      const index = br * blockCols + bc;
      zRow[bc] = counts[index] / (height * width);
      if (zRow[bc] > highest) highest = zRow[bc];
      cRow[bc] = [br * block, br * block + height - 1, bc * block, bc * block + width - 1,
                   added[index], removed[index], counts[index]];
    }
    z.push(zRow);
    customdata.push(cRow);
  }
  return { z, customdata, block, blockRows, blockCols, highest };
}

const SYNC_ENCODE_PIXELS = 512 * 512;

async function encodeAsync(canvas) {
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
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
    this.generation = 0;
  }

  // Draws the layer at `state` (from LayerHistory.state); resolves once Plotly has painted it.
  // A draw started later supersedes this one: its picture is skipped, never shown out of order.
  async draw(state, mode, palette) {
    const generation = ++this.generation;
    const layer = this.layer;
    const trace = !state ? { type: "heatmap", z: [[0]], showscale: false, hoverinfo: "skip" }
      : mode === "density" ? this.densityTrace(state) : await this.bitmapTrace(state, palette);
    if (generation !== this.generation || this.removed) return false;
    this.state = state;
    if (this.mode !== mode) this.readout.textContent = "hover a cell for its units and state";
    this.mode = mode;
    const step = state ? state.frame.step : null;
    const active = state ? state.active : 0;
    const density = layer.size ? active / layer.size : 0;
    const head = this.titlePrefix ? `${this.titlePrefix} · ` : "";
    const title = `${head}${layer.name} · ${layer.rows}×${layer.cols} · ${active} active ` +
      `(${(100 * density).toFixed(1)}%) · step ${step ?? "–"}` +
      (mode !== "density" && this.factor && this.factor.fx * this.factor.fy > 1
        ? ` · ${this.factor.fy}×${this.factor.fx} per pixel` : "");
    const layout = {
      title: { text: title, font: { size: 12 } },
      margin: { l: 48, r: 12, t: 30, b: 36 },
      xaxis: { title: { text: "input unit", standoff: 4 }, zeroline: false, showgrid: false },
      yaxis: { title: { text: "output unit", standoff: 4 }, autorange: "reversed", zeroline: false,
               showgrid: false, scaleanchor: false, ...(layer.rows <= 12 ? { dtick: 1 } : {}) },
      uirevision: `${layer.name}-${mode}`,
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "#ffffff",
    };
    await Plotly.react(this.plot, [trace], layout, PLOT_CONFIG);
    if (!this.hooked) {
      this.hooked = true;
      this.plot.on("plotly_hover", (event) => this.hover(event));
    }
    const data = this.plot.dataset;
    data.step = String(step);
    data.active = String(active);
    data.mode = mode;
    data.added = String(state ? state.frame.added.length : 0);
    data.removed = String(state ? state.frame.removed.length : 0);
    data.drawn = String(Number(data.drawn || 0) + 1);
    return true;
  }

  // Screen pixels available: a layer with more connections than that is drawn with several
  // connections per pixel (the browser would otherwise drop most of them when scaling down).
  resolution() {
    const { rows, cols } = this.layer;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(64, Math.floor(((this.plot.clientWidth || 400) - 60) * ratio));
    const height = Math.max(64, Math.floor(((this.plot.clientHeight || 320) - 66) * ratio));
    const fx = Math.max(1, Math.ceil(cols / width));
    const fy = Math.max(1, Math.ceil(rows / height));
    return { fx, fy, width: Math.ceil(cols / fx), height: Math.ceil(rows / fy) };
  }

  // The connections bitmap; where a pixel covers several connections it shows the most notable
  // one (removed > added > kept > inactive), so no rewire mark is ever hidden by the scaling.
  // PNG-encoded for Plotly's `image` trace.
  async bitmapTrace(state, palette) {
    const { rows, cols } = this.layer;
    const { fx, fy, width, height } = this.resolution();
    this.factor = { fx, fy };
    if (!this.image || this.image.width !== width || this.image.height !== height) {
      this.canvas.width = width;
      this.canvas.height = height;
      this.image = this.context.createImageData(width, height);
    }
    const pixels = new Uint32Array(this.image.data.buffer);
    const colours = ["inactive", "kept", "added", "removed"].map((name) => rgba32(palette[name]));
    const mask = state.mask;
    const { frame } = state;
    if (fx === 1 && fy === 1) {
      for (let i = 0; i < mask.length; i++) pixels[i] = mask[i] ? colours[1] : colours[0];
      for (let i = 0; i < frame.added.length; i++) pixels[frame.added[i]] = colours[2];
      for (let i = 0; i < frame.removed.length; i++) pixels[frame.removed[i]] = colours[3];
    } else {
      const codes = new Uint8Array(width * height);
      const colPixel = new Uint32Array(cols);
      for (let c = 0; c < cols; c++) colPixel[c] = (c / fx) | 0;
      for (let r = 0; r < rows; r++) {
        const base = ((r / fy) | 0) * width;
        const offset = r * cols;
        for (let c = 0; c < cols; c++) if (mask[offset + c]) codes[base + colPixel[c]] = 1;
      }
      const mark = (list, code) => {
        for (let i = 0; i < list.length; i++) {
          const flat = list[i];
          const pixel = ((flat / cols / fy) | 0) * width + colPixel[flat % cols];
          if (codes[pixel] < code) codes[pixel] = code;
        }
      };
      mark(frame.added, 2);
      mark(frame.removed, 3);
      for (let i = 0; i < codes.length; i++) pixels[i] = colours[codes[i]];
    }
    this.context.putImageData(this.image, 0, 0);
    // A screen-sized bitmap encodes in a few ms; only a huge one is worth the async round trip.
    const source = width * height <= SYNC_ENCODE_PIXELS ? this.canvas.toDataURL("image/png")
      : await encodeAsync(this.canvas);
    return { type: "image", source, x0: (fx - 1) / 2, y0: (fy - 1) / 2, dx: fx, dy: fy,
             hoverinfo: "none", zsmooth: false };
  }

  densityTrace(state) {
    const blocks = blockDensity(this.layer, state);
    this.blocks = blocks;
    // Cells centred on their blocks, so the axes stay in unit indices.
    const centre = (i) => i * blocks.block + (blocks.block - 1) / 2;
    const x = Array.from({ length: blocks.blockCols }, (_, i) => centre(i));
    const y = Array.from({ length: blocks.blockRows }, (_, i) => centre(i));
    return {
      type: "heatmap", z: blocks.z, x, y, customdata: blocks.customdata, zmin: 0,
      zmax: Math.max(blocks.highest, 1e-6),
      colorscale: "Viridis", colorbar: { title: { text: "density" }, thickness: 10 },
      xgap: 0, ygap: 0,
      hovertemplate: "out %{customdata[0]}–%{customdata[1]}, in %{customdata[2]}–%{customdata[3]}" +
        "<br>density %{z:.3f} (%{customdata[6]} active)<br>added %{customdata[4]}, removed %{customdata[5]}" +
        "<extra></extra>",
    };
  }

  hover(event) {
    const point = event.points && event.points[0];
    if (!point || !this.state) return;
    if (this.mode === "density") {
      const [rowStart, rowEnd, colStart, colEnd, added, removed, count] = point.customdata;
      this.readout.textContent = `block out ${rowStart}–${rowEnd}, in ${colStart}–${colEnd}: density ` +
        `${Number(point.z).toFixed(3)} (${count} active), added ${added}, removed ${removed}`;
      return;
    }
    const { fx = 1, fy = 1 } = this.factor || {};
    const { rows, cols } = this.layer;
    const blockRow = Math.round((point.y - (fy - 1) / 2) / fy);
    const blockCol = Math.round((point.x - (fx - 1) / 2) / fx);
    const r0 = blockRow * fy;
    const c0 = blockCol * fx;
    if (r0 < 0 || c0 < 0 || r0 >= rows || c0 >= cols) return;
    if (fx === 1 && fy === 1) {
      const name = STATE_NAMES[connectionState(this.state, r0 * cols + c0)];
      this.readout.textContent = `out ${r0}, in ${c0}: ${name}`;
      this.readout.dataset.state = name;
      return;
    }
    const r1 = Math.min(rows, r0 + fy) - 1;
    const c1 = Math.min(cols, c0 + fx) - 1;
    const counts = [0, 0, 0, 0];
    for (let r = r0; r <= r1; r++) for (let c = c0; c <= c1; c++) counts[connectionState(this.state, r * cols + c)] += 1;
    const parts = STATE_NAMES.map((name, i) => (counts[i] ? `${counts[i]} ${name}` : "")).filter(Boolean);
    this.readout.textContent = `out ${r0}–${r1}, in ${c0}–${c1}: ${parts.join(", ")}`;
    this.readout.dataset.state = STATE_NAMES[counts[3] ? 3 : counts[2] ? 2 : counts[1] ? 1 : 0];
  }

  remove() {
    this.removed = true;
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
    const small = height <= 12 && width <= 12 ? { dtick: 1 } : {};
    const layout = {
      title: { text: `${this.layer.name} per ${label} (${height}×${width}) · step ${state.frame.step}`, font: { size: 12 } },
      margin: { l: 36, r: 12, t: 30, b: 30 },
      xaxis: { showgrid: false, zeroline: false, constrain: "domain", ...small },
      yaxis: { autorange: "reversed", showgrid: false, zeroline: false, ...small,
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
