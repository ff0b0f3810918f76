// The layer overview: one row per sparsified layer (name, shape, density, active, a sparkline of
// its density and turnover over the rewires) that jumps to a layer's panel or pins it on top.
// A model with repeated blocks (blocks.js: transformer layers, ResNet stages) is shown first as
// a grid, `#block-grid`: a row per block, a column per role, each cell one layer shaded by its
// density (or turnover) at the rewire on screen, a click jumps to its panel; the layers outside
// the blocks are named under it, and the list follows.
//
// Sparklines are small SVG paths, not Plotly plots nor canvases: fifty of them cost less than
// one chart. (As one canvas each, producing their pictures for the compositor was a third of
// the renderer's work when a notebook page opened seven views: ~50 canvases per view.)
import { groupBlocks } from "./blocks.js";
import { COLOURS } from "./chart_style.js";
import { densityColour } from "./heads.js";

const SPARK_WIDTH = 96; // with the speedup columns, the table still fits its 580 px column
const SPARK_HEIGHT = 22;
const SHORT_NAME = 18; // characters: a name this short is never broken over lines
// The speedup columns (speedup.js fills them) say what they are on hover.
const COLUMN_TITLES = {
  "speedup b1 / b16": "Predicted inference speedup of the layer's fastest format (dst_core.compact) over dense, " +
    "at batch 1 / 16, from this server's cost table",
  "to structure": "Share of the active connections that would have to move to reach constant fan-in " +
    "(every output the same number of inputs) and 2:4 (at most 2 in every 4 consecutive inputs)",
};

export class LayerOverview {
  // onJump(index), onPin(index) are called from the rows' buttons.
  constructor(container, { onJump, onPin }) {
    this.container = container;
    this.onJump = onJump;
    this.onPin = onPin;
    this.rows = [];
    this.cells = []; // grid cells by layer index (none for a layer outside the blocks)
    this.colourBy = "density";
  }

  // layers: the `/rewires` layers ({index, name, shape, weight_shape, kind, density, active}).
  layout(layers) {
    const table = document.createElement("table");
    table.className = "overview";
    table.id = "layer-overview-table";
    const head = table.createTHead().insertRow();
    for (const title of ["#", "layer", "shape", "density", "active", "speedup b1 / b16", "to structure",
      "density / turnover", ""]) {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = title;
      if (COLUMN_TITLES[title]) th.title = COLUMN_TITLES[title];
      head.append(th);
    }
    const body = table.createTBody();
    this.groups = groupBlocks(layers.map((layer) => layer.name));
    const inBlock = new Map((this.groups?.cells || []).map((cell) => [cell.index, cell]));
    this.rows = layers.map((layer) => {
      const row = body.insertRow();
      row.dataset.index = String(layer.index);
      const cells = [0, 1, 2, 3, 4, 5, 6, 7, 8].map(() => row.insertCell());
      cells[0].textContent = String(layer.index);
      const jump = document.createElement("button");
      jump.type = "button";
      jump.className = "link";
      // A layer of the block grid is named by its block and role (the grid's header names the
      // stack); any other by its name. Text nodes: a name is data, never markup.
      const cell = inBlock.get(layer.index);
      if (cell) {
        const block = document.createElement("span");
        block.className = "block-label";
        block.textContent = cell.block;
        jump.append(block, " ");
        breakAtDots(jump, cell.role);
        jump.title = layer.name;
      } else if (layer.name.length > SHORT_NAME) breakAtDots(jump, layer.name);
      else {
        jump.textContent = layer.name;
        jump.classList.add("nowrap");
      }
      jump.setAttribute("aria-label", `Go to layer ${layer.name}`);
      jump.addEventListener("click", () => this.onJump(layer.index));
      cells[1].append(jump);
      cells[2].textContent = (layer.weight_shape || layer.shape).join("×");
      cells[3].className = "number";
      cells[4].className = "number";
      cells[5].className = "number speedup";
      cells[6].className = "number structure";
      const spark = sparkline();
      cells[7].append(spark.svg);
      const pin = document.createElement("button");
      pin.type = "button";
      pin.textContent = "Pin";
      pin.setAttribute("aria-pressed", "false");
      pin.setAttribute("aria-label", `Pin layer ${layer.name}`);
      pin.addEventListener("click", () => this.onPin(layer.index));
      cells[8].append(pin);
      return { row, name: layer.name, density: cells[3], active: cells[4], speedup: cells[5], structure: cells[6],
               spark, pin, size: layer.shape[0] * layer.shape[1] };
    });
    this.cells = [];
    if (!this.groups) {
      this.container.replaceChildren(table);
      return;
    }
    const list = document.createElement("details");
    list.className = "overview-list";
    list.open = true;
    const summary = document.createElement("summary");
    summary.textContent = "All layers";
    list.append(summary, table);
    this.container.replaceChildren(this.grid(layers, this.groups), list);
  }

  // The block grid: rows = blocks, columns = roles (headers, so no name is cut where it differs).
  grid(layers, groups) {
    const section = document.createElement("div");
    section.className = "block-section";
    const bar = document.createElement("div");
    bar.className = "block-toolbar";
    const what = document.createElement("span");
    what.className = "muted";
    what.textContent = `${groups.blocks.length} blocks of ${groups.pattern} × ${groups.roles.length} roles`;
    const colour = document.createElement("select");
    colour.id = "block-colour";
    colour.append(new Option("density", "density"), new Option("turnover", "turnover"));
    colour.value = this.colourBy;
    colour.addEventListener("change", () => { this.colourBy = colour.value; this.paint(); });
    const label = document.createElement("label");
    label.append("colour by ", colour);
    bar.append(what, label);
    const scroll = document.createElement("div");
    scroll.className = "block-scroll";
    const table = document.createElement("table");
    table.id = "block-grid";
    table.className = "block-grid";
    const head = table.createTHead().insertRow();
    const corner = document.createElement("th");
    corner.scope = "col";
    corner.textContent = "block";
    head.append(corner);
    for (const role of groups.roles) {
      const th = document.createElement("th");
      th.scope = "col";
      th.title = role;
      breakAtDots(th, role);
      head.append(th);
    }
    const body = table.createTBody();
    const rowOf = new Map();
    for (const block of groups.blocks) {
      const row = body.insertRow();
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = block;
      row.append(th);
      rowOf.set(block, groups.roles.map(() => row.insertCell()));
    }
    for (const cell of groups.cells) {
      const layer = layers[cell.index];
      const button = document.createElement("button");
      button.type = "button";
      button.className = "block-cell";
      button.dataset.block = cell.block;
      button.dataset.role = cell.role;
      button.dataset.layer = String(cell.index);
      button.setAttribute("aria-label", `Open block ${cell.block} ${cell.role} (${cell.name})`);
      button.title = `${cell.name} · ${(layer.weight_shape || layer.shape).join("×")}`;
      button.addEventListener("click", () => this.onJump(cell.index));
      rowOf.get(cell.block)[groups.roles.indexOf(cell.role)].append(button);
      this.cells[cell.index] = { button, size: layer.shape[0] * layer.shape[1], name: cell.name,
                                 density: null, turnover: null };
    }
    scroll.append(table);
    const legend = document.createElement("p");
    legend.className = "block-legend muted";
    this.legend = legend;
    section.append(bar, scroll, legend);
    if (groups.rest.length) {
      const rest = document.createElement("div");
      rest.className = "block-rest";
      rest.id = "block-rest";
      rest.append("Outside the blocks: ");
      for (const layer of groups.rest) {
        const jump = document.createElement("button");
        jump.type = "button";
        jump.className = "link";
        jump.textContent = layer.name;
        jump.dataset.layer = String(layer.index);
        jump.setAttribute("aria-label", `Open ${layer.name}`);
        jump.addEventListener("click", () => this.onJump(layer.index));
        rest.append(jump);
      }
      section.append(rest);
    }
    return section;
  }

  // Shades the grid's cells by density or turnover (the values update() stored).
  paint() {
    if (!this.groups) return;
    const turnover = this.colourBy === "turnover";
    const highest = Math.max(0, ...this.cells.filter(Boolean).map((cell) => cell.turnover || 0));
    for (const cell of this.cells) {
      if (!cell) continue;
      const value = turnover ? cell.turnover : cell.density;
      const known = value !== null && value !== undefined;
      // Turnover is shaded relative to the grid's highest at this rewire; density as the panels.
      const share = !known ? 0 : turnover ? (highest > 0 ? value / highest : 0) : value;
      cell.button.style.background = known ? densityColour(share, turnover ? "--added" : "--kept") : "";
      cell.button.classList.toggle("light-text", known && Math.sqrt(share) > 0.6);
      cell.button.textContent = known ? `${(100 * value).toFixed(value < 0.1 ? 1 : 0)}` : "–";
      cell.button.dataset.value = known ? String(value) : "";
    }
    if (this.legend) {
      this.legend.textContent = turnover
        ? `cells: % of a layer's connections added at this rewire (darkest = the grid's highest, ${(100 * highest).toFixed(1)}%)`
        : "cells: % of a layer's connections active (shaded as the panels: light = sparse)";
    }
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
      // No rewire recorded (a static run, or none yet): the layout's count, as its panel shows.
      const active = column >= 0 ? rewires.active[index]?.[column] : rewires.initial?.[index] ?? null;
      entry.active.textContent = active === null || active === undefined ? "–" : String(active);
      entry.density.textContent = active === null || active === undefined ? "–"
        : `${(100 * active / Math.max(1, entry.size)).toFixed(1)}%`;
      const cell = this.cells[index];
      if (cell) {
        const added = column >= 0 ? rewires.added[index]?.[column] : null;
        const known = active !== null && active !== undefined;
        cell.density = known ? active / Math.max(1, cell.size) : null;
        cell.turnover = known && added !== null && added !== undefined ? added / Math.max(1, active) : null;
      }
    });
    this.paint();
    this.drawSparklines(rewires, column);
  }

  // The sparklines of the newest update, drawn once per animation frame; the first time only
  // when the page is idle (at most 2 s later): secondary to the panels, they must not delay
  // the other views of a notebook page, which share this main thread.
  drawSparklines(rewires, column) {
    const first = this.sparks === undefined;
    const pending = this.sparks;
    this.sparks = { rewires, column };
    if (pending) return; // a draw is scheduled: it takes these
    const draw = () => {
      const { rewires: latest, column: at } = this.sparks;
      this.sparks = null;
      this.rows.forEach((entry, index) => drawSparkline(
        entry.spark, latest.density(index), latest.added[index], latest.active[index], at));
    };
    if (first && window.requestIdleCallback) window.requestIdleCallback(draw, { timeout: 2000 });
    else requestAnimationFrame(draw);
  }

  highlight(index) {
    for (const entry of this.rows) entry.row.classList.toggle("current", Number(entry.row.dataset.index) === index);
    this.cells.forEach((cell, i) => cell && cell.button.classList.toggle("current", i === index));
  }
}

// `text` into `element` with a line-break opportunity after each dot: a long layer name or role
// wraps at its parts instead of being cut by an ellipsis (which hid the role: the part that
// tells `transformer.h.0.attn.c_attn` from `transformer.h.0.attn.c_proj`).
function breakAtDots(element, text) {
  const parts = String(text).split(".");
  parts.forEach((part, i) => {
    if (i < parts.length - 1) element.append(`${part}.`, document.createElement("wbr"));
    else element.append(part);
  });
}

const SVG = "http://www.w3.org/2000/svg";

// An empty sparkline: its turnover bars, density line and rewire tick as three paths.
function sparkline() {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "sparkline");
  svg.setAttribute("viewBox", `0 0 ${SPARK_WIDTH} ${SPARK_HEIGHT}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("aria-hidden", "true");
  const path = (attributes) => {
    const element = document.createElementNS(SVG, "path");
    for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
    svg.append(element);
    return element;
  };
  return { svg, bars: path({ fill: "#93c5fd" }),
           line: path({ fill: "none", stroke: "#1d2733", "stroke-width": "1.2" }),
           tick: path({ fill: COLOURS.marker }) };
}

// Density as a line (scaled to its own range), turnover (added / active) as bars, the rewire on
// screen as a tick.
function drawSparkline(spark, density, added, active, column) {
  const width = SPARK_WIDTH;
  const height = SPARK_HEIGHT;
  const count = density.length;
  const x = (i) => (count === 1 ? width / 2 : (i / (count - 1)) * (width - 2) + 1);
  const round = (value) => Math.round(value * 100) / 100;
  let turnoverMax = 0;
  const turnover = added.map((value, i) => {
    const share = active[i] ? value / active[i] : 0;
    if (share > turnoverMax) turnoverMax = share;
    return share;
  });
  let bars = "";
  for (let i = 0; i < count && turnoverMax; i++) {
    const barHeight = (turnover[i] / turnoverMax) * (height - 2);
    if (barHeight > 0) bars += `M${round(x(i) - 0.5)} ${height}v${-round(barHeight)}h1v${round(barHeight)}z`;
  }
  let line = "";
  const finite = density.filter((value) => value !== null);
  if (finite.length) {
    const low = Math.min(...finite);
    const high = Math.max(...finite);
    const y = (value) => (high > low ? height - 2 - ((value - low) / (high - low)) * (height - 4) : height / 2);
    density.forEach((value, i) => {
      if (value !== null) line += `${line ? "L" : "M"}${round(x(i))} ${round(y(value))}`;
    });
  }
  spark.bars.setAttribute("d", bars);
  spark.line.setAttribute("d", line);
  spark.tick.setAttribute("d", count && column >= 0 ? `M${round(x(column) - 1)} 0h2v${height}h-2z` : "");
}
