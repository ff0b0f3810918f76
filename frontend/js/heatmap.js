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
    // Step, active count and density change every frame: plain text above the plot, so a new
    // frame never needs a Plotly layout pass (the plot's own title stays fixed).
    this.stats = document.createElement("div");
    this.stats.className = "panel-stats";
    this.stats.setAttribute("aria-live", "off");
    this.readout = document.createElement("figcaption");
    this.readout.className = "readout";
    this.readout.textContent = "hover a cell for its units and state";
    this.root.append(this.stats, this.plot, this.readout);
    container.append(this.root);
    this.canvas = document.createElement("canvas");
    this.canvas.width = layer.cols;
    this.canvas.height = layer.rows;
    this.context = this.canvas.getContext("2d");
    this.image = null;
    this.pixels = null; // active connections per screen pixel at frame `pixels.index` (see pixelCounts)
    this.plotted = null; // what Plotly last drew: {mode, key}; a matching frame only swaps the bitmap
    this.state = null;
    this.mode = null;
    this.hooked = false;
    this.generation = 0;
  }

  // Draws the layer at `state` (from LayerHistory.state); resolves once the picture is painted.
  // A draw started later supersedes this one: its picture is skipped, never shown out of order.
  // In connections mode a frame whose picture has the same geometry as the last one only swaps
  // the image trace's bitmap (no Plotly layout or calc pass): that is the 1024 × 1024 budget.
  async draw(state, mode, palette) {
    const generation = ++this.generation;
    const layer = this.layer;
    if (this.mode !== mode) this.readout.textContent = "hover a cell for its units and state";
    let painted;
    if (state && mode !== "density") {
      const bitmap = this.bitmap(state, palette);
      const key = `${bitmap.width}x${bitmap.height}`;
      if (this.plotted && this.plotted.mode === mode && this.plotted.key === key && this.swapBitmap(bitmap.source)) {
        painted = this.decoded();
      } else {
        painted = this.plotTrace(bitmap.trace, mode, key);
      }
    } else {
      const trace = !state ? { type: "heatmap", z: [[0]], showscale: false, hoverinfo: "skip" } : this.densityTrace(state);
      painted = this.plotTrace(trace, mode, "density");
    }
    this.state = state;
    this.mode = mode;
    this.describe(state, mode);
    await painted;
    if (!this.hooked && this.plot.on) {
      this.hooked = true;
      this.plot.on("plotly_hover", (event) => this.hover(event));
    }
    return generation === this.generation && !this.removed;
  }

  describe(state, mode) {
    const layer = this.layer;
    const step = state ? state.frame.step : null;
    const active = state ? state.active : 0;
    const density = layer.size ? active / layer.size : 0;
    const scaled = mode !== "density" && this.factor && this.factor.fx * this.factor.fy > 1
      ? ` · ${this.factor.fy}×${this.factor.fx} connections per pixel` : "";
    this.stats.textContent = `step ${step ?? "–"} · ${active} active (${(100 * density).toFixed(1)}%)` +
      (mode === "density" ? " · density map" : scaled);
    const data = this.plot.dataset;
    data.step = String(step);
    data.active = String(active);
    data.mode = mode;
    data.added = String(state ? state.frame.added.length : 0);
    data.removed = String(state ? state.frame.removed.length : 0);
    data.drawn = String(Number(data.drawn || 0) + 1);
  }

  plotTrace(trace, mode, key) {
    const layer = this.layer;
    const head = this.titlePrefix ? `${this.titlePrefix} · ` : "";
    const layout = {
      title: { text: `${head}${layer.name} · ${layer.rows}×${layer.cols}`, font: { size: 12 } },
      margin: { l: 48, r: 12, t: 30, b: 36 },
      // automargin: four-digit unit indices push the axis title out instead of printing over it.
      xaxis: { title: { text: "input unit", standoff: 4 }, zeroline: false, showgrid: false, automargin: true },
      yaxis: { title: { text: "output unit", standoff: 4 }, autorange: "reversed", zeroline: false, automargin: true,
               showgrid: false, scaleanchor: false, ...(layer.rows <= 12 ? { dtick: 1 } : {}) },
      uirevision: `${layer.name}-${mode}`,
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "#ffffff",
    };
    this.plotted = null;
    return Plotly.react(this.plot, [trace], layout, PLOT_CONFIG).then(() => {
      if (!this.removed) this.plotted = { mode, key };
    });
  }

  // Points the drawn image trace at a new bitmap: the SVG <image> Plotly made for it, and the
  // trace's `source` (so a later resize or restyle redraws this picture, not an old one).
  swapBitmap(source) {
    const element = this.plot.querySelector(".imagelayer image");
    const trace = this.plot.data && this.plot.data[0];
    if (!element || !trace || trace.type !== "image") return false;
    trace.source = source;
    if (this.plot._fullData && this.plot._fullData[0]) this.plot._fullData[0].source = source;
    element.setAttributeNS("http://www.w3.org/1999/xlink", "xlink:href", source);
    this.element = element;
    return true;
  }

  decoded() {
    const element = this.element;
    const frame = new Promise((resolve) => requestAnimationFrame(() => resolve()));
    if (!element || typeof element.decode !== "function") return frame;
    return element.decode().catch(() => undefined).then(() => frame);
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

  // Active connections per screen pixel at `state`, kept across draws: moving one or a few
  // rewires away costs O(changes) (each frame stores its net added/removed), anything else
  // (a jump, a new screen size) recounts the mask once.
  pixelCounts(state, fx, fy, width, height) {
    const { rows, cols } = this.layer;
    const frames = this.layer.frames;
    const cache = this.pixels;
    const colPixel = (c) => (c / fx) | 0;
    const pixelOf = (flat) => (((flat / cols) | 0) / fy | 0) * width + colPixel(flat % cols);
    const reusable = cache && cache.fx === fx && cache.fy === fy && cache.width === width &&
      cache.height === height && cache.frames === frames && Math.abs(state.index - cache.index) <= 16;
    if (reusable) {
      const counts = cache.counts;
      const move = (frame, sign) => {
        for (let i = 0; i < frame.added.length; i++) counts[pixelOf(frame.added[i])] += sign;
        for (let i = 0; i < frame.removed.length; i++) counts[pixelOf(frame.removed[i])] -= sign;
      };
      for (let i = cache.index + 1; i <= state.index; i++) move(frames[i], 1);
      for (let i = cache.index; i > state.index; i--) move(frames[i], -1);
      cache.index = state.index;
      return counts;
    }
    const counts = new Int32Array(width * height);
    const mask = state.mask;
    if (fx === 1 && fy === 1) {
      for (let i = 0; i < mask.length; i++) counts[i] = mask[i];
    } else {
      const colPixels = new Uint32Array(cols);
      for (let c = 0; c < cols; c++) colPixels[c] = colPixel(c);
      for (let r = 0; r < rows; r++) {
        const base = ((r / fy) | 0) * width;
        const offset = r * cols;
        for (let c = 0; c < cols; c++) if (mask[offset + c]) counts[base + colPixels[c]] += 1;
      }
    }
    this.pixels = { fx, fy, width, height, frames, index: state.index, counts };
    return counts;
  }

  // The connections bitmap, at most one pixel per screen pixel; where a pixel covers several
  // connections it shows the most notable one (removed > added > kept > inactive), so no rewire
  // mark is ever hidden by the scaling. PNG-encoded for Plotly's `image` trace.
  bitmap(state, palette) {
    const { cols } = this.layer;
    const { fx, fy, width, height } = this.resolution();
    this.factor = { fx, fy };
    if (!this.image || this.image.width !== width || this.image.height !== height) {
      this.canvas.width = width;
      this.canvas.height = height;
      this.image = this.context.createImageData(width, height);
    }
    const counts = this.pixelCounts(state, fx, fy, width, height);
    const pixels = new Uint32Array(this.image.data.buffer);
    const [inactive, kept, added, removed] = STATE_NAMES.map((name) => rgba32(palette[name]));
    for (let i = 0; i < counts.length; i++) pixels[i] = counts[i] > 0 ? kept : inactive;
    const pixelOf = (flat) => (((flat / cols) | 0) / fy | 0) * width + ((flat % cols) / fx | 0);
    const { frame } = state;
    for (let i = 0; i < frame.added.length; i++) {
      const pixel = pixelOf(frame.added[i]);
      if (pixels[pixel] !== removed) pixels[pixel] = added;
    }
    for (let i = 0; i < frame.removed.length; i++) pixels[pixelOf(frame.removed[i])] = removed;
    this.context.putImageData(this.image, 0, 0);
    // At most screen-sized, so the PNG encodes in a few ms on the main thread.
    const source = this.canvas.toDataURL("image/png");
    return { source, width, height,
             trace: { type: "image", source, x0: (fx - 1) / 2, y0: (fy - 1) / 2, dx: fx, dy: fy,
                      hoverinfo: "none", zsmooth: false } };
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

// Active connections per input column (column sums of the mask), kept across draws like the
// pixel counts of LayerPanel: O(changes) for a nearby frame, one pass over the mask otherwise.
export function columnSums(layer, state, cache = null) {
  const { rows, cols } = layer;
  if (cache && cache.frames === layer.frames && Math.abs(state.index - cache.index) <= 16) {
    const sums = cache.sums;
    const move = (frame, sign) => {
      for (let i = 0; i < frame.added.length; i++) sums[frame.added[i] % cols] += sign;
      for (let i = 0; i < frame.removed.length; i++) sums[frame.removed[i] % cols] -= sign;
    };
    for (let i = cache.index + 1; i <= state.index; i++) move(layer.frames[i], 1);
    for (let i = cache.index; i > state.index; i--) move(layer.frames[i], -1);
    cache.index = state.index;
    return cache;
  }
  const sums = new Int32Array(cols);
  const mask = state.mask;
  for (let r = 0; r < rows; r++) {
    const offset = r * cols;
    for (let c = 0; c < cols; c++) sums[c] += mask[offset + c];
  }
  return { frames: layer.frames, index: state.index, sums };
}

export function inputCounts(layer, state, geometry, cache = null) {
  const { sums } = columnSums(layer, state, cache);
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

// 1, 2 or 5 times a power of ten, at least `value`.
export function niceCeiling(value) {
  const power = 10 ** Math.floor(Math.log10(value));
  for (const factor of [1, 2, 5, 10]) if (factor * power >= value) return factor * power;
  return 10 * power;
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
    this.stats = document.createElement("div");
    this.stats.className = "panel-stats";
    this.root.append(this.stats, this.plot, caption);
    container.append(this.root);
  }

  // The step is plain text above the plot; zmax moves in coarse steps, so the colour bar and
  // layout stay put between frames.
  draw(state) {
    if (!state) return Promise.resolve();
    this.sums = columnSums(this.layer, state, this.sums);
    const z = inputCounts(this.layer, state, this.geometry, this.sums);
    const { height, width, label } = this.geometry;
    let total = 0;
    let highest = 0;
    for (const row of z) for (const value of row) { total += value; if (value > highest) highest = value; }
    this.plot.dataset.total = String(total);
    this.plot.dataset.step = String(state.frame.step);
    this.stats.textContent = `step ${state.frame.step} · ${total} active connections from ${width * height} ` +
      `${label}s`;
    // zmax moves in steps of a "nice" size so the colour bar rarely needs redrawing.
    const zmax = niceCeiling(Math.max(1, highest));
    const trace = {
      type: "heatmap", z, colorscale: "Viridis", zmin: 0, zmax,
      colorbar: { title: { text: "active" }, thickness: 10 },
      hovertemplate: `${label} row %{y}, col %{x}<br>%{z} active connections<extra></extra>`,
    };
    const square = height > 1;
    const small = height <= 12 && width <= 12 ? { dtick: 1 } : {};
    const axis = label.split(" ")[0]; // "input", "kernel"
    const layout = {
      title: { text: `${this.layer.name} per ${label} (${height}×${width})`, font: { size: 12 } },
      margin: { l: 48, r: 12, t: 30, b: 36 },
      xaxis: { showgrid: false, zeroline: false, constrain: "domain", ...small,
               title: { text: square ? `${axis} column` : label, standoff: 4 } },
      yaxis: { autorange: "reversed", showgrid: false, zeroline: false, ...small,
               ...(square ? { scaleanchor: "x", constrain: "domain", title: { text: `${axis} row`, standoff: 4 } }
                 : { showticklabels: false }) },
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
