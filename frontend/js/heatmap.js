// Drawing one layer's view (per-pixel counts from `/view`) as a Plotly trace (never WebGL:
// headless chromium has none). Until plotly.js has loaded (js/plotly.js: never before the first
// panel), the same bitmap is shown as a plain image in the plot area, with the same hover
// readout; the Plotly plot (axes, zoom) replaces it once the library is there.
//
// Connections mode: an `image` trace, one bitmap pixel per view pixel: removed, else added at
// this rewire, else a shade from inactive to kept by the share of the pixel's connections that
// are active (exactly kept or inactive where one pixel is one connection). Density mode: a
// `heatmap` of the active share per block, at most DENSITY_GRID blocks a side.
import { MARGINS, PAPER_BACKGROUND, PLOT_CONFIG } from "./chart_style.js";
import { pixelRange } from "./codec.js";
import { plotly, plotlyNow, purge, react } from "./plotly.js";

export const PALETTES = {
  standard: { label: "standard", inactive: "#eef1f4", kept: "#3d4a5a", added: "#2563eb", removed: "#dc2626" },
  // Okabe–Ito blue and orange: told apart with any red–green colour blindness.
  colorblind: { label: "colour-blind safe", inactive: "#eef1f4", kept: "#4b4b4b", added: "#0072b2", removed: "#e69f00" },
};
export const STATE_NAMES = ["inactive", "kept", "added", "removed"];
export const DENSITY_GRID = 128;
export const MAX_GRID = 2048; // the server's bound on rows and cols of a view
// A layer panel's plot is PANEL_ROW_PX high per output unit, between PANEL_MIN_PLOT_PX and the
// full PANEL_HEIGHT_PX (.heatmap in style.css): a 10×64 layer gets a low panel, not ten 28-px
// stripes. Its pixels (gridFor) follow the size it is given.
const PANEL_HEIGHT_PX = 320;
const PANEL_ROW_PX = 12;
const PANEL_MIN_PLOT_PX = 96;

// The height of the plot (margins included) for a layer of `rows` output units.
export function panelHeight(rows) {
  const { t, b } = MARGINS.panel;
  const plot = Math.max(PANEL_MIN_PLOT_PX, rows * PANEL_ROW_PX);
  return Math.min(PANEL_HEIGHT_PX, plot + t + b);
}

function rgb(hex) {
  const value = parseInt(hex.slice(1), 16);
  return [(value >> 16) & 255, (value >> 8) & 255, value & 255];
}

// Matrix rows are output units; columns are inputs, and for a conv (out, in, kh, kw) weight
// column c is input channel c / (kh·kw), kernel row (c mod kh·kw) / kw, kernel column c mod kw.
export function describeColumn(layer, column) {
  const shape = layer.weight_shape;
  const image = layer.image_shape; // the first layer of an MLP on images: its inputs are pixels
  if ((!shape || shape.length !== 4) && Array.isArray(image) && image.length >= 2) {
    const [height, width] = image;
    const plane = height * width;
    if (layer.shape[1] % plane === 0) {
      const channel = Math.floor(column / plane);
      const within = column % plane;
      const where = `pixel row ${Math.floor(within / width)}, col ${within % width}`;
      return layer.shape[1] > plane ? `in ${column} (channel ${channel}, ${where})` : `in ${column} (${where})`;
    }
  }
  if (!shape || shape.length !== 4) return `in ${column}`;
  const [, , kh, kw] = shape;
  const channel = Math.floor(column / (kh * kw));
  const within = column % (kh * kw);
  return `in ${channel}, kernel row ${Math.floor(within / kw)}, col ${within % kw}`;
}

// The one hover tooltip of the page (#panel-tooltip), on <body>: a panel contains its layout
// and paint (content-visibility), which would clip a tooltip inside it.
let tooltipElement = null;
function tooltip() {
  if (!tooltipElement) {
    tooltipElement = document.createElement("div");
    tooltipElement.id = "panel-tooltip";
    tooltipElement.className = "panel-tooltip";
    tooltipElement.setAttribute("role", "tooltip");
    tooltipElement.hidden = true;
    document.body.append(tooltipElement);
  }
  return tooltipElement;
}

// Inputs c0..c1-1 in words: of an image's pixels, where they start and end.
function describeColumns(layer, c0, c1) {
  const image = layer.image_shape;
  if (Array.isArray(image) && image.length >= 2 && layer.shape[1] % (image[0] * image[1]) === 0) {
    const width = image[1];
    const plane = image[0] * width;
    const at = (column) => `row ${Math.floor((column % plane) / width)}, col ${column % width}`;
    return `in ${c0}–${c1 - 1} (pixels ${at(c0)} to ${at(c1 - 1)})`;
  }
  return `in ${c0}–${c1 - 1}`;
}

// The matrix ranges of pixel (i, j) and what it covers, in words (the hover readout).
export function describePixel(layer, view, i, j) {
  const [r0, r1] = pixelRange(i, view.rows, view.gr);
  const [c0, c1] = pixelRange(j, view.cols, view.gc);
  const at = i * view.gc + j;
  const kept = view.kept[at];
  const added = view.added[at];
  const removed = view.removed[at];
  const possible = view.possible[at];
  const inactive = possible - kept - added;
  const conv = layer.weight_shape && layer.weight_shape.length === 4;
  const outName = conv ? "out channel" : "out";
  if (possible === 1) {
    const state = removed ? "removed" : added ? "added" : kept ? "kept" : "inactive";
    return { text: `${outName} ${r0}, ${describeColumn(layer, c0)}: ${state}`, state };
  }
  const rowsText = r1 - r0 === 1 ? `${outName} ${r0}` : `${outName} ${r0}–${r1 - 1}`;
  let colsText;
  if (c1 - c0 === 1) colsText = describeColumn(layer, c0);
  else if (conv) {
    const [, , kh, kw] = layer.weight_shape;
    const first = Math.floor(c0 / (kh * kw));
    const last = Math.floor((c1 - 1) / (kh * kw));
    colsText = first === last
      ? `in ${first}, ${c1 - c0} of its ${kh}×${kw} kernel positions`
      : `in ${first}–${last} (${c1 - c0} inputs × kernel positions)`;
  } else colsText = describeColumns(layer, c0, c1);
  const parts = [`${kept} kept`, `${added} added`, `${removed} removed`, `${inactive} inactive`];
  const state = removed ? "removed" : added ? "added" : kept ? "kept" : "inactive";
  return { text: `${rowsText}, ${colsText}: ${possible} connections: ${parts.join(", ")}`, state };
}

export class LayerPanel {
  // layer: { index, name, shape: [rows, cols], weight_shape, kind, density }.
  constructor(container, layer, { id = null, title = null, actions = [] } = {}) {
    this.layer = layer;
    this.root = document.createElement("figure");
    this.root.className = "panel heatmap-panel";
    this.root.dataset.index = String(layer.index);
    const header = document.createElement("div");
    header.className = "panel-head";
    this.title = document.createElement("span");
    this.title.className = "panel-title";
    const [rows, cols] = layer.shape;
    const weight = layer.weight_shape && layer.weight_shape.length === 4 ? ` · ${layer.weight_shape.join("×")}` : "";
    // textContent: a name is data, never markup.
    this.title.textContent = `${title ? `${title} · ` : ""}${layer.name} · ${rows}×${cols}${weight}`;
    header.append(this.title);
    for (const action of actions) header.append(action);
    this.plot = document.createElement("div");
    this.plot.className = "heatmap";
    if (id) this.plot.id = id;
    this.plot.dataset.layer = layer.name;
    this.plot.style.height = `${panelHeight(rows)}px`;
    this.plot.setAttribute("role", "img");
    this.plot.setAttribute("aria-label", `connections of ${layer.name} (${rows} outputs × ${cols} inputs)`);
    // Step, active count and density change every rewire: plain text above the plot, so a new
    // picture never needs a Plotly layout pass.
    this.stats = document.createElement("div");
    this.stats.className = "panel-stats";
    this.stats.textContent = "not drawn yet";
    this.readout = document.createElement("figcaption");
    this.readout.className = "readout";
    this.readout.textContent = "hover a cell for its units and state";
    this.root.append(header, this.stats, this.plot, this.readout);
    container.append(this.root);
    // The picture's pixels (fill) are put on a canvas only where a PNG is made of them for
    // Plotly (bitmap): the first paint's preview canvas takes them directly, and a notebook
    // page's views hold no 2-D context per layer they have not drawn.
    this.image = null;
    this.canvas = null;
    this.view = null;
    this.mode = null;
    this.plotted = null; // what Plotly last drew: {mode, key}; a matching picture only swaps the bitmap
    this.hooked = false;
    this.generation = 0;
  }

  // Pixels the panel can show in `mode`: one view pixel per screen pixel, at most the layer's
  // own size (then exact) and the server's bound.
  gridFor(mode) {
    const [rows, cols] = this.layer.shape;
    const ratio = window.devicePixelRatio || 1;
    const margin = MARGINS.panel;
    const width = Math.max(32, Math.floor(((this.plot.clientWidth || 400) - margin.l - margin.r) * ratio));
    const height = Math.max(32, Math.floor(((this.plot.clientHeight || 300) - margin.t - margin.b) * ratio));
    const cap = mode === "density" ? DENSITY_GRID : MAX_GRID;
    // Round down to a power of two's worth of steps so small resizes reuse cached views.
    const fit = (size, pixels) => Math.min(size, cap, quantise(pixels));
    return [fit(rows, height), fit(cols, width)];
  }

  // Draws `view` (decoded) in `mode`; resolves true once painted, false when superseded by a
  // later draw (whose picture is then the one shown: never out of order).
  async draw(view, mode, palette) {
    const generation = ++this.generation;
    this.palette = palette;
    let painted;
    if (mode !== "density" && !plotlyNow()) {
      this.fill(view, palette);
      painted = this.showPreview(view);
      plotly().then(() => this.upgrade(generation)).catch(() => { /* the preview stays */ });
    } else if (mode === "density") {
      painted = this.plotTrace(this.densityTrace(view), mode, `density-${view.gr}x${view.gc}`, view);
    } else {
      const bitmap = this.bitmap(view, palette);
      const key = `${view.gr}x${view.gc}`;
      if (this.plotted && this.plotted.mode === mode && this.plotted.key === key && this.swapBitmap(bitmap.source)) {
        painted = this.decoded();
      } else {
        painted = this.plotTrace(bitmap.trace, mode, key, view);
      }
    }
    if (this.mode !== mode) this.readout.textContent = "hover a cell for its units and state";
    this.view = view;
    this.mode = mode;
    await painted;
    if (generation !== this.generation || this.removed) return false;
    this.describe(view, mode);
    if (!this.hooked && this.plot.on) {
      this.hooked = true;
      this.plot.on("plotly_hover", (event) => this.hover(event));
    }
    return true;
  }

  describe(view, mode) {
    const [rows, cols] = this.layer.shape;
    const size = rows * cols;
    const perPixel = view.exact ? "" : ` · ${(size / (view.gr * view.gc)).toFixed(1)} connections per pixel`;
    this.stats.textContent = `step ${view.step} · rewire ${view.rewire} · ${view.active} active ` +
      `(${(100 * view.active / Math.max(1, size)).toFixed(1)}%) · +${view.added_total} −${view.removed_total}` +
      (mode === "density" ? " · density map" : perPixel);
    const data = this.plot.dataset;
    data.step = String(view.step);
    data.rewire = String(view.rewire);
    data.active = String(view.active);
    data.added = String(view.added_total);
    data.removed = String(view.removed_total);
    data.grid = `${view.gr}x${view.gc}`;
    data.mode = mode;
    data.drawn = String(Number(data.drawn || 0) + 1);
  }

  plotTrace(trace, mode, key, view) {
    const [rows] = this.layer.shape;
    const conv = this.layer.weight_shape && this.layer.weight_shape.length === 4;
    const layout = {
      margin: MARGINS.panel,
      // automargin: four-digit unit indices push the axis title out instead of printing over it.
      xaxis: { title: { text: conv ? "input channel × kernel position" : "input unit", standoff: 4 },
               zeroline: false, showgrid: false, automargin: true, range: [-0.5, view.cols - 0.5] },
      yaxis: { title: { text: conv ? "output channel" : "output unit", standoff: 4 }, zeroline: false,
               automargin: true, showgrid: false, scaleanchor: false, range: [view.rows - 0.5, -0.5],
               ...(rows <= 12 ? { dtick: 1 } : {}) },
      uirevision: `${this.layer.name}-${mode}`,
      paper_bgcolor: PAPER_BACKGROUND,
      plot_bgcolor: "#ffffff",
    };
    this.plotted = null;
    this.dropPreview();
    return react(this.plot, [trace], layout, PLOT_CONFIG).then(() => {
      if (!this.removed) this.plotted = { mode, key };
    });
  }

  // The bitmap (fill) as a canvas over the plot area (where Plotly's axes would frame it), while
  // the library is not loaded: no PNG encoding; resolves once it is on screen.
  showPreview(view) {
    if (!this.preview) {
      this.preview = document.createElement("canvas");
      this.preview.className = "panel-preview";
      const margin = MARGINS.panel;
      Object.assign(this.preview.style, { left: `${margin.l}px`, top: `${margin.t}px`,
                                          width: `calc(100% - ${margin.l + margin.r}px)`,
                                          height: `calc(100% - ${margin.t + margin.b}px)` });
      this.preview.addEventListener("mousemove", (event) => this.hoverPreview(event));
      this.plot.append(this.preview);
    }
    this.previewView = view;
    this.preview.width = view.gc;
    this.preview.height = view.gr;
    this.preview.getContext("2d").putImageData(this.image, 0, 0);
    this.element = null;
    return this.decoded();
  }

  hoverPreview(event) {
    const view = this.previewView;
    const box = this.preview.getBoundingClientRect();
    if (!view || !box.width || !box.height) return;
    const i = Math.floor(((event.clientY - box.top) / box.height) * view.gr);
    const j = Math.floor(((event.clientX - box.left) / box.width) * view.gc);
    if (!(i >= 0 && j >= 0 && i < view.gr && j < view.gc)) return;
    const { text, state } = describePixel(this.layer, view, i, j);
    this.tell(text, state, event);
  }

  dropPreview() {
    if (!this.preview) return;
    this.preview.remove();
    this.preview = null;
    this.previewView = null;
  }

  // plotly.js arrived: the picture drawn as a preview at `generation` is drawn again with it
  // (unless a later draw, a release or a removal came first: that one decides what is shown).
  upgrade(generation) {
    if (generation !== this.generation || this.removed || !this.view || !this.preview) return;
    this.draw(this.view, this.mode, this.palette);
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

  // The view as a PNG for Plotly's image trace (fill, then encoded: a few ms at screen size).
  bitmap(view, palette) {
    this.fill(view, palette);
    this.canvas ??= document.createElement("canvas");
    if (this.canvas.width !== view.gc || this.canvas.height !== view.gr) {
      this.canvas.width = view.gc;
      this.canvas.height = view.gr;
    }
    this.canvas.getContext("2d").putImageData(this.image, 0, 0);
    // At most screen-sized, so the PNG encodes in a few ms on the main thread.
    const source = this.canvas.toDataURL("image/png");
    const dx = view.cols / view.gc;
    const dy = view.rows / view.gr;
    return { source, trace: { type: "image", source, x0: (dx - 1) / 2, y0: (dy - 1) / 2, dx, dy,
                              hoverinfo: "none", zsmooth: false } };
  }

  // One RGBA pixel per view pixel into this.image.
  fill(view, palette) {
    const { gr, gc } = view;
    if (!this.image || this.image.width !== gc || this.image.height !== gr) this.image = new ImageData(gc, gr);
    const data = this.image.data;
    const [inactive, kept, added, removed] = STATE_NAMES.map((name) => rgb(palette[name]));
    const shade = [kept[0] - inactive[0], kept[1] - inactive[1], kept[2] - inactive[2]];
    for (let i = 0, o = 0; i < gr * gc; i++, o += 4) {
      let colour;
      if (view.removed[i]) colour = removed;
      else if (view.added[i]) colour = added;
      else {
        const possible = view.possible[i];
        // sqrt: a 10%-dense block is still visibly grey, not lost against the inactive colour.
        const t = possible ? Math.sqrt(view.kept[i] / possible) : 0;
        data[o] = inactive[0] + shade[0] * t;
        data[o + 1] = inactive[1] + shade[1] * t;
        data[o + 2] = inactive[2] + shade[2] * t;
        data[o + 3] = 255;
        continue;
      }
      data[o] = colour[0]; data[o + 1] = colour[1]; data[o + 2] = colour[2]; data[o + 3] = 255;
    }
  }

  densityTrace(view) {
    const { gr, gc } = view;
    const z = [];
    let highest = 0;
    for (let i = 0; i < gr; i++) {
      const row = new Array(gc);
      for (let j = 0; j < gc; j++) {
        const at = i * gc + j;
        const value = view.possible[at] ? (view.kept[at] + view.added[at]) / view.possible[at] : 0;
        row[j] = value;
        if (value > highest) highest = value;
      }
      z.push(row);
    }
    const centre = (i, size, pixels) => { const [a, b] = pixelRange(i, size, pixels); return (a + b - 1) / 2; };
    return {
      type: "heatmap", z, zmin: 0, zmax: Math.max(highest, 1e-6), hoverinfo: "none",
      x: Array.from({ length: gc }, (_, j) => centre(j, view.cols, gc)),
      y: Array.from({ length: gr }, (_, i) => centre(i, view.rows, gr)),
      colorscale: "Viridis", colorbar: { title: { text: "density" }, thickness: 10 },
    };
  }

  hover(event) {
    const point = event.points && event.points[0];
    const view = this.view;
    if (!point || !view) return;
    let i;
    let j;
    if (this.mode === "density" && Array.isArray(point.pointNumber)) [i, j] = point.pointNumber;
    else {
      const dx = view.cols / view.gc;
      const dy = view.rows / view.gr;
      j = Math.round((point.x - (dx - 1) / 2) / dx);
      i = Math.round((point.y - (dy - 1) / 2) / dy);
    }
    if (!(i >= 0 && j >= 0 && i < view.gr && j < view.gc)) return;
    const { text, state } = describePixel(this.layer, view, i, j);
    this.tell(this.mode === "density"
      ? `${text} · density ${((view.kept[i * view.gc + j] + view.added[i * view.gc + j]) /
          Math.max(1, view.possible[i * view.gc + j])).toFixed(3)}`
      : text, state, event.event);
  }

  // What the pointer is on: in the caption under the plot, and in a tooltip beside the pointer
  // kept inside the window (the caption is off screen when the panel's bottom is).
  tell(text, state, pointer) {
    this.readout.textContent = text;
    this.readout.dataset.state = state;
    if (!pointer || !Number.isFinite(pointer.clientX)) return;
    if (!this.tipHooked) {
      this.tipHooked = true;
      this.plot.addEventListener("mouseleave", () => { tooltip().hidden = true; });
    }
    const tip = tooltip();
    tip.textContent = text;
    tip.dataset.state = state;
    tip.dataset.layer = this.layer.name;
    tip.hidden = false;
    const margin = 12;
    const { width, height } = tip.getBoundingClientRect();
    const x = Math.min(pointer.clientX + margin, window.innerWidth - width - 4);
    const y = pointer.clientY + margin + height > window.innerHeight
      ? pointer.clientY - margin - height : pointer.clientY + margin;
    tip.style.left = `${Math.max(4, x)}px`;
    tip.style.top = `${Math.max(4, y)}px`;
  }

  // Off screen for a while: the plot's memory goes back, the panel keeps its place and label.
  release() {
    if (!this.view && !this.plotted) return;
    this.dropPreview();
    purge(this.plot);
    this.plotted = null;
    this.view = null;
    this.hooked = false;
    this.generation += 1;
    delete this.plot.dataset.step;
    this.stats.textContent = "not drawn (off screen)";
  }

  remove() {
    this.removed = true;
    purge(this.plot);
    this.root.remove();
  }
}

// Largest "round" pixel count at most `pixels` (multiples of 16 above 64): a panel resized by a
// few pixels asks the server for the same grid, so cached views stay usable.
function quantise(pixels) {
  return pixels <= 64 ? pixels : pixels - (pixels % 16);
}

// Active connections per input pixel: column sums of the first layer, from a view one row high
// and as wide as the layer (or the server's bound), shown as the input image (MLP on images),
// the kernel window (CNN: summed over channels) or one row of features.
export function inputGeometry(meta, layer) {
  const image = meta && meta.image_shape;
  const shape = layer.weight_shape;
  const [, cols] = layer.shape;
  if (shape && shape.length === 4) {
    const [, channels, kh, kw] = shape;
    return { height: kh, width: kw, channels, label: "kernel position" };
  }
  if (image && cols % (image[0] * image[1]) === 0) {
    return { height: image[0], width: image[1], channels: cols / (image[0] * image[1]), label: "input pixel" };
  }
  return { height: 1, width: cols, channels: 1, label: "input feature" };
}

// 1, 2 or 5 times a power of ten, at least `value`.
// Plotly's "Viridis" colour scale, so a preview and the Plotly heatmap after it agree.
const VIRIDIS = ["#440154", "#48186a", "#472d7b", "#424086", "#3b528b", "#33638d", "#2c728e",
  "#26828e", "#21918c", "#1fa088", "#28ae80", "#3fbc73", "#5ec962", "#84d44b", "#addc30", "#d8e219",
  "#fde725"].map(rgb);

// [r, g, b] of `t` in [0, 1] on the Viridis scale (linear between its stops).
export function viridis(t) {
  const x = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  return VIRIDIS[i].map((low, k) => Math.round(low + (VIRIDIS[i + 1][k] - low) * f));
}

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
    const header = document.createElement("div");
    header.className = "panel-head";
    const title = document.createElement("span");
    title.className = "panel-title";
    title.textContent = `${layer.name} per ${this.geometry.label} (${this.geometry.height}×${this.geometry.width})`;
    header.append(title);
    this.plot = document.createElement("div");
    this.plot.className = "heatmap";
    this.plot.id = "input-view";
    this.plot.setAttribute("role", "img");
    this.plot.setAttribute("aria-label", `active connections of ${layer.name} per ${this.geometry.label}`);
    const caption = document.createElement("figcaption");
    caption.className = "readout";
    caption.textContent = `active connections of ${layer.name} per ${this.geometry.label}` +
      " (column sums of its mask; bright = many)";
    this.stats = document.createElement("div");
    this.stats.className = "panel-stats";
    this.root.append(header, this.stats, this.plot, caption);
    container.append(this.root);
  }

  // The view this panel needs: one row, every column (exact column sums) up to the bound.
  grid() {
    return [1, Math.min(this.layer.shape[1], MAX_GRID)];
  }

  draw(view) {
    const complete = view.gc === view.cols; // one pixel per column: exact column sums
    const sums = new Float64Array(view.gc);
    for (let j = 0; j < view.gc; j++) sums[j] = view.kept[j] + view.added[j];
    const { height, width, channels, label } = this.geometry;
    const plane = height * width;
    const z = [];
    let total = 0;
    let highest = 0;
    for (let h = 0; h < height; h++) {
      const row = new Array(width).fill(0);
      for (let w = 0; w < width; w++) {
        for (let ch = 0; ch < channels; ch++) {
          const column = ch * plane + h * width + w;
          row[w] += complete ? sums[column] || 0 : 0;
        }
        total += row[w];
        if (row[w] > highest) highest = row[w];
      }
      z.push(row);
    }
    // Every position with the same count (a dense first layer: every kernel position feeds
    // every output) is one flat colour, which reads as "no information": say it in words.
    let lowest = Infinity;
    for (const row of z) for (const value of row) if (value < lowest) lowest = value;
    const uniform = complete && highest > 0 && lowest === highest;
    const possible = this.layer.shape[0] * channels; // connections one position can have
    this.stats.textContent = `step ${view.step} · ${total} active connections from ${width * height} ${label}s` +
      (!uniform ? "" : highest === possible
        ? ` · every ${label} has ${highest} active connections (of ${possible}): dense`
        : ` · every ${label} has ${highest} active connections: the same everywhere`);
    this.plot.dataset.uniform = String(uniform);
    // zmax moves in steps of a "nice" size so the colour bar rarely needs redrawing.
    const trace = {
      type: "heatmap", z, colorscale: "Viridis", zmin: 0, zmax: niceCeiling(Math.max(1, highest)),
      colorbar: { title: { text: "active" }, thickness: 10 },
      hovertemplate: `${label} row %{y}, col %{x}<br>%{z} active connections<extra></extra>`,
    };
    const square = height > 1;
    const small = height <= 12 && width <= 12 ? { dtick: 1 } : {};
    const axis = label.split(" ")[0]; // "input", "kernel"
    const layout = {
      margin: MARGINS.panel,
      xaxis: { showgrid: false, zeroline: false, constrain: "domain", ...small,
               title: { text: square ? `${axis} column` : label, standoff: 4 } },
      yaxis: { autorange: "reversed", showgrid: false, zeroline: false, ...small,
               ...(square ? { scaleanchor: "x", constrain: "domain", title: { text: `${axis} row`, standoff: 4 } }
                 : { showticklabels: false }) },
      uirevision: "input",
      paper_bgcolor: PAPER_BACKGROUND,
    };
    const drawn = () => {
      this.plot.dataset.total = String(total);
      this.plot.dataset.step = String(view.step);
    };
    this.shown = view;
    if (!plotlyNow()) { // the picture now, the Plotly heatmap (axes, colour bar) once it loads
      this.showPreview(z, trace.zmax, square);
      drawn();
      plotly().then(() => { if (!this.removed && this.shown === view) this.draw(view); })
        .catch(() => { /* the preview stays */ });
      return Promise.resolve();
    }
    this.preview?.remove();
    this.preview = null;
    return react(this.plot, [trace], layout, PLOT_CONFIG).then(drawn);
  }

  // z (rows of counts) as a Viridis bitmap over the plot area, square pixels for an image.
  showPreview(z, zmax, square) {
    const height = z.length;
    const width = z[0].length;
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext("2d");
    const image = context.createImageData(width, height);
    for (let h = 0, o = 0; h < height; h++) {
      for (let w = 0; w < width; w++, o += 4) {
        const [r, g, b] = viridis(z[h][w] / zmax);
        image.data[o] = r; image.data[o + 1] = g; image.data[o + 2] = b; image.data[o + 3] = 255;
      }
    }
    context.putImageData(image, 0, 0);
    if (!this.preview) {
      this.preview = document.createElement("img");
      this.preview.className = "panel-preview";
      this.preview.alt = "";
      const margin = MARGINS.panel;
      Object.assign(this.preview.style, { left: `${margin.l}px`, top: `${margin.t}px`,
                                          width: `calc(100% - ${margin.l + margin.r + 60}px)`,
                                          height: `calc(100% - ${margin.t + margin.b}px)`,
                                          objectFit: square ? "contain" : "fill" });
      this.plot.append(this.preview);
    }
    this.preview.src = canvas.toDataURL("image/png");
  }

  remove() {
    this.removed = true;
    purge(this.plot);
    this.root.remove();
  }
}
