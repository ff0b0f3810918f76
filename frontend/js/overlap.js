// Mask overlap in Compare: for one layer that every compared run has with the same shape, the
// N × N Jaccard index of the runs' masks at the shared player's step (a heatmap, each cell
// annotated; hover: the connections both share, both runs' names, what random masks of those
// densities would share) and every pair's Jaccard index over the run, the random-mask
// expectation dashed. From `GET /api/compare/overlap` and `/api/compare/overlap/series`.
//
// Its cost follows the screen like the topology section's: off screen it asks and draws nothing
// and catches up on sight. While the player moves, it asks once the player has been still for
// DEBOUNCE_MS; each chart has at most one request in flight and draws only the answer for the
// newest position asked (answers to older ones are dropped). An answer it cannot draw (a 422's
// detail) is said as text where its chart was.
import { api } from "./api.js";
import { chartBase, chartTitle, MARGINS, PLOT_CONFIG, stepMarker } from "./chart_style.js";
import { describe } from "./churn.js";
import { purge, react } from "./plotly.js";
import { plain } from "./text.js";
import * as urls from "./urls.js";

const MAX_RUNS = 16; // the server's bound on the runs of one overlap request
const SERIES_POINTS = 64; // a pair's Jaccard over time: at most this many steps
const SERIES_REFRESH_MS = 2000; // while a compared run records, its series is asked again at most this often
const DEBOUNCE_MS = 150; // scrubbing: ask once the player is still this long
const KEEP_ANSWERS = 128; // matrices kept (N × N numbers each): scrubbing back costs nothing
const ON_SCREEN_MARGIN_PX = 200;
// A pair's line: two runs, so none of the runs' own colours (Tableau 10, without its grey).
const PAIR_COLOURS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"];
const BASE = chartBase(MARGINS.topology, -0.3);

const fmt = (value, digits = 3) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));
const sameShape = (a, b) => Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((size, i) => size === b[i]);

// The layers of the first run that every other run has with the same shape, matched by name
// where every run has a layer of that name, else by position: [{ key, index, name, shape }]
// (`key`: what the server is asked for, a name or an index), and how many were left out.
export function sharedLayers(runs) {
  const [first, ...others] = runs;
  const shared = [];
  (first?.layers || []).forEach((layer, index) => {
    const named = others.map((run) => run.layers.find((other) => other.name === layer.name));
    const matches = named.every(Boolean) ? named : others.map((run) => run.layers[index]);
    if (!matches.every((other) => other && sameShape(other.shape, layer.shape))) return;
    // Asked by index where the layer sits at the same index in every run (a name could read as
    // a number), else by its name.
    const sameIndex = matches.every((other, k) => others[k].layers[index] === other);
    shared.push({ key: sameIndex ? String(index) : layer.name, index, name: layer.name, shape: layer.shape });
  });
  return { shared, leftOut: (first?.layers.length || 0) - shared.length };
}

// One chart's requests: at most one in flight; `wanted` is the newest ask, `shown` what is drawn.
function lane() {
  return { busy: false, wanted: null, shown: null };
}

export class OverlapSection {
  // root: an empty element; prefix: the ids of its parts (`${prefix}-layer`, `${prefix}-matrix`, …).
  constructor(root, { player, prefix }) {
    this.root = root;
    this.prefix = prefix;
    this.player = player;
    this.runs = [];
    this.layers = [];
    this.step = null;
    this.live = false;
    this.generation = 0;
    this.answers = new Map(); // matrix path -> answer, least recently used first
    this.series = new Map(); // series path -> { body, fetched, lastStep }
    this.timer = 0;
    this.build();
    this.near = false;
    this.pending = false;
    this.watch = new IntersectionObserver((entries) => {
      for (const entry of entries) this.near = entry.isIntersecting;
      if (this.pending && this.near) this.refresh();
    }, { rootMargin: `${ON_SCREEN_MARGIN_PX}px` });
    this.watch.observe(root);
    player.subscribe((state) => {
      this.step = state.step;
      this.live = state.live;
      clearTimeout(this.timer);
      this.timer = setTimeout(() => { this.timer = 0; this.refresh(); }, DEBOUNCE_MS);
    });
  }

  build() {
    const p = this.prefix;
    this.root.classList.add("overlap");
    const heading = document.createElement("h3");
    heading.textContent = "Mask overlap";
    const controls = document.createElement("div");
    controls.className = "topology-controls";
    this.select = document.createElement("select");
    this.select.id = `${p}-layer`;
    this.select.setAttribute("aria-label", "Mask overlap of layer");
    this.select.addEventListener("change", () => this.refresh());
    const label = document.createElement("label");
    label.append("Layer ", this.select);
    this.note = document.createElement("span");
    this.note.id = `${p}-note`;
    this.note.className = "muted";
    controls.append(label, this.note);
    this.missing = document.createElement("p");
    this.missing.id = `${p}-none`;
    this.missing.className = "overlap-none";
    this.charts = document.createElement("div");
    this.charts.className = "charts";
    const figure = (key, title) => {
      const box = document.createElement("figure");
      box.className = "chart-figure";
      const div = document.createElement("div");
      div.className = "chart";
      div.id = `${p}-${key}`;
      div.setAttribute("role", "img");
      div.setAttribute("aria-label", title);
      const caption = document.createElement("figcaption");
      caption.id = `${p}-${key}-caption`;
      caption.className = "chart-caption muted";
      box.append(div, caption);
      this.charts.append(box);
      return { div, caption };
    };
    this.matrix = figure("matrix", "Jaccard index of every pair of runs' masks");
    this.curves = figure("series", "Jaccard index of each pair of runs over time");
    this.root.replaceChildren(heading, controls, this.missing, this.charts);
  }

  // runs: the compared runs, [{ id, name, colour, layers, steps }] (`steps`, the run's rewire
  // steps, may be replaced by a longer list while it records).
  open(runs) {
    this.generation += 1;
    this.runs = runs;
    this.byId = new Map(runs.map((run) => [run.id, run]));
    this.answers.clear();
    this.series.clear();
    this.lanes = { matrix: lane(), series: lane() };
    delete this.root.dataset.step;
    delete this.root.dataset.layer;
    const { shared, leftOut } = sharedLayers(runs);
    this.layers = shared;
    this.select.replaceChildren(...shared.map((layer, position) =>
      new Option(`${layer.index}: ${layer.name} (${layer.shape.join("×")})`, String(position))));
    this.select.disabled = shared.length === 0;
    const total = runs[0]?.layers.length || 0;
    this.note.textContent = leftOut && shared.length
      ? `${leftOut} of ${total} layers left out: their shapes differ between the runs` : "";
    let none = "";
    if (runs.length > MAX_RUNS) none = `Mask overlap compares at most ${MAX_RUNS} runs; these are ${runs.length}.`;
    else if (new Set(runs.map((run) => run.id)).size < runs.length) {
      none = "A run is compared with itself here: mask overlap compares distinct runs (a run shares all of its own mask).";
    }
    else if (runs.every((run) => !run.layers?.length)) none = "None of these runs recorded a mask: there is no overlap to show.";
    else if (!shared.length) {
      none = `No layer has the same shape in every compared run (${total} layers of ${runs[0]?.name ?? "the first run"} ` +
        "checked): their masks cannot be compared. Pick runs of the same architecture.";
    }
    this.missing.textContent = none;
    this.missing.hidden = !none;
    this.charts.hidden = Boolean(none);
    this.root.dataset.layers = String(shared.length);
    // Drawn once the player has its steps (compare_view sets them next: a change it announces).
  }

  close() {
    this.generation += 1;
    clearTimeout(this.timer);
    this.timer = 0;
    this.pending = false;
    this.runs = [];
    this.answers.clear();
    this.series.clear();
    for (const div of this.root.querySelectorAll(".chart")) purge(div);
  }

  onScreen() {
    if (!this.near) return false;
    const box = this.root.getBoundingClientRect();
    if (!box.width && !box.height) return false; // hidden (another view)
    return box.bottom >= -ON_SCREEN_MARGIN_PX && box.top <= window.innerHeight + ON_SCREEN_MARGIN_PX;
  }

  refresh() {
    if (this.runs.length < 2 || !this.layers.length || this.runs.length > MAX_RUNS || this.step === null) return;
    if (this.charts.hidden) return; // the note says why nothing is asked (a run twice, no shared layer)
    if (!this.onScreen()) { this.pending = true; return; }
    this.pending = false;
    const layer = this.layers[Number(this.select.value) || 0];
    this.ask("matrix", this.matrixAsk(layer));
    this.ask("series", this.seriesAsk(layer));
  }

  // What the matrix needs now: a request, or a sentence where no run can answer.
  matrixAsk(layer) {
    const step = this.step;
    const early = this.runs.filter((run) => !run.steps.length || run.steps[0] > step);
    if (early.length) {
      return { key: `none:${step}`, step, layer,
               text: `No mask yet at step ${step} in ${early.map((run) => run.name).join(", ")}.` };
    }
    // Following live: each run's newest rewire (the runs need not have reached the same step).
    const live = this.live;
    const path = urls.compareOverlap(this.runs.map((run) => run.id), { layer: layer.key, step: live ? null : step });
    return { key: `${path}|${step}`, path, step, layer, live };
  }

  seriesAsk(layer) {
    const path = urls.compareOverlapSeries(this.runs.map((run) => run.id), { layer: layer.key, points: SERIES_POINTS });
    const known = this.series.get(path);
    const recording = this.player.followable;
    const stale = known && recording && this.step > known.lastStep && performance.now() - known.fetched > SERIES_REFRESH_MS;
    // A new key redraws (the marker moves) from the answer kept; a stale one is asked again.
    return { key: `${path}|${stale ? performance.now() : known?.fetched ?? 0}|${this.live ? "live" : this.step}`,
             path, step: this.step, layer, stale };
  }

  async ask(name, wanted) {
    const lanes = this.lanes;
    const state = lanes[name];
    state.wanted = wanted;
    if (state.busy) return; // the request in flight asks again for the newest when it is done
    state.busy = true;
    const generation = this.generation;
    try {
      while (state.wanted && state.wanted.key !== state.shown) {
        const current = state.wanted;
        let body = null;
        let error = null;
        try {
          body = name === "matrix" ? await this.matrixOf(current) : await this.seriesOf(current);
        } catch (failure) {
          error = failure;
        }
        if (generation !== this.generation) return;
        if (state.wanted !== current) continue; // a newer position was asked meanwhile: drop this one
        const draw = name === "matrix" ? this.drawMatrix(current, body, error) : this.drawSeries(current, body, error);
        await draw;
        if (generation !== this.generation) return;
        state.shown = current.key;
        if (name === "matrix" && state.wanted === current) {
          this.root.dataset.step = String(current.step);
          this.root.dataset.layer = current.layer.key;
        }
      }
    } finally {
      state.busy = false;
    }
  }

  async matrixOf(wanted) {
    if (wanted.text) return null;
    const hit = this.answers.get(wanted.path);
    if (hit) { this.answers.delete(wanted.path); this.answers.set(wanted.path, hit); return hit; }
    const body = await api(wanted.path);
    // Following live, the newest rewire moves on: such an answer is not kept.
    if (!wanted.live) {
      this.answers.set(wanted.path, body);
      while (this.answers.size > KEEP_ANSWERS) this.answers.delete(this.answers.keys().next().value);
    }
    return body;
  }

  async seriesOf(wanted) {
    const known = this.series.get(wanted.path);
    if (known && !wanted.stale) return known.body;
    const body = await api(wanted.path);
    const lastStep = body.steps.length ? body.steps[body.steps.length - 1] : -1;
    this.series.set(wanted.path, { body, fetched: performance.now(), lastStep });
    return body;
  }

  nameOf(id) {
    return this.byId.get(id)?.name ?? id;
  }

  // Said in place of a chart (never a half-drawn one).
  fail(figure, text) {
    purge(figure.div);
    figure.div.hidden = true;
    figure.caption.textContent = text;
    figure.caption.classList.add("error-text");
    figure.caption.classList.remove("muted");
    figure.div.dataset.error = "true";
  }

  shown(figure, text) {
    figure.div.hidden = false;
    figure.caption.textContent = text;
    figure.caption.classList.remove("error-text");
    figure.caption.classList.add("muted");
    delete figure.div.dataset.error;
  }

  drawMatrix(wanted, answer, error) {
    if (wanted.text) { this.fail(this.matrix, wanted.text); return null; }
    if (error) { this.fail(this.matrix, `Mask overlap: ${describe(error)}`); return null; }
    const count = answer.runs.length;
    const names = answer.runs.map((id) => this.nameOf(id));
    const positions = [...Array(count).keys()];
    // Each run's name in its colour on both axes (Plotly reads this subset of HTML; names are plain()).
    const ticks = answer.runs.map((id, i) => `<span style="color:${this.byId.get(id)?.colour ?? "#1d2733"}">${plain(names[i])}</span>`);
    const hover = answer.jaccard.map((row, i) => row.map((value, j) =>
      `${plain(names[i])} × ${plain(names[j])}<br>Jaccard ${fmt(value)}: ${answer.shared[i][j]} connections shared ` +
      `(${answer.active[i]} and ${answer.active[j]} active)<br>random masks of these densities: ${fmt(answer.random_jaccard[i][j])}`));
    this.shown(this.matrix, `${answer.layer} (${answer.shape.join("×")}): ${answer.runs.map((id, i) =>
      `${names[i]} at rewire ${answer.rewires[i]} (step ${answer.steps[i]})`).join(", ")}. ` +
      "Jaccard = shared / connections active in either.");
    const axis = { tickmode: "array", tickvals: positions, ticktext: ticks, showgrid: false, zeroline: false, automargin: true };
    return react(this.matrix.div, [{
      type: "heatmap", z: answer.jaccard, x: positions, y: positions, zmin: 0, zmax: 1, colorscale: "Blues", reversescale: true, // dark: the same mask
      text: hover, hovertemplate: "%{text}<extra></extra>", texttemplate: "%{z:.3f}",
      colorbar: { title: { text: "Jaccard" }, thickness: 10 },
    }], { ...BASE, title: chartTitle(`Mask overlap (Jaccard) at step ${wanted.step}`),
          xaxis: { ...axis, side: "bottom" }, yaxis: { ...axis, autorange: "reversed", scaleanchor: "x" },
          uirevision: "keep" }, PLOT_CONFIG);
  }

  drawSeries(wanted, body, error) {
    if (error) { this.fail(this.curves, `Mask overlap over time: ${describe(error)}`); return null; }
    const traces = [];
    body.pairs.forEach(([i, j], pair) => {
      const colour = PAIR_COLOURS[pair % PAIR_COLOURS.length];
      const name = `${this.nameOf(body.runs[i])} – ${this.nameOf(body.runs[j])}`;
      const group = `pair-${i}-${j}`;
      traces.push({ type: "scatter", mode: "lines+markers", name: plain(name), legendgroup: group, x: body.steps,
                    y: body.jaccard[pair], line: { color: colour }, marker: { size: 3, color: colour },
                    hovertemplate: `${plain(name)}<br>step %{x}: %{y:.3f}<extra></extra>` });
      // In the legend by its pair only (the caption says what a dashed line is).
      traces.push({ type: "scatter", mode: "lines", name: plain(`${name}: random masks`), legendgroup: group, showlegend: false,
                    x: body.steps, y: body.random_jaccard[pair], line: { color: colour, dash: "dash", width: 1 },
                    hovertemplate: `${plain(name)}, random masks of their densities<br>step %{x}: %{y:.3f}<extra></extra>` });
    });
    this.shown(this.curves, "One line per pair of runs; dashed: what random masks of the same densities would share.");
    return react(this.curves.div, traces, {
      ...BASE, title: chartTitle("Jaccard index over time"), showlegend: body.pairs.length <= 10,
      legend: { orientation: "v", x: 1.02, y: 1, font: { size: 11 } },
      xaxis: { title: { text: "step", standoff: 2 }, zeroline: false, automargin: true },
      yaxis: { title: { text: "Jaccard index" }, range: [0, 1.02], automargin: true },
      shapes: stepMarker(this.live ? null : wanted.step), uirevision: "keep",
    }, PLOT_CONFIG);
  }
}
