// Per-head density strips under the panels of attention projections: one small cell per head
// (grouped q | k | v for a fused projection such as GPT-2's c_attn), shaded by density as the
// panels shade a pixel (inactive → kept by the square root of the active share), a dead head
// (no active connection) outlined in the "removed" colour and counted in the strip's title.
//
// It asks `GET /topology` (its `heads`) only for a layer whose `/rewires` entry says it has
// heads, and only when that layer's panel has painted a rewire: the panels on screen, at the
// rewire they show. Answers are kept in a small LRU, so scrubbing back costs nothing.
import { api } from "./api.js";
import * as urls from "./urls.js";

const KEEP_ANSWERS = 128;

// The cell's background: the panels' shading of an active share (heatmap.js `bitmap`), from the
// palette's CSS colours, so a palette switch recolours the strips without a redraw.
export function densityColour(density, kept = "--kept") {
  const share = Math.max(0, Math.min(1, Number(density) || 0));
  return `color-mix(in srgb, var(${kept}) ${(100 * Math.sqrt(share)).toFixed(1)}%, var(--inactive))`;
}

const describe = (head) => `${head.part ? `${head.part} ` : ""}head ${head.head}: ${head.active} active, ` +
  `density ${Number(head.density).toFixed(3)}${head.active === 0 ? " (dead)" : ""}`;

export class HeadStrips {
  constructor(runId) {
    this.runId = runId;
    this.answers = new Map(); // `${layer}|${step}` → Promise of the `heads` list
  }

  heads(layer, step) {
    const key = `${layer}|${step}`;
    let answer = this.answers.get(key);
    if (answer) {
      this.answers.delete(key); // most recently used goes last
    } else {
      answer = api(urls.topology(this.runId, { layer, step })).then((body) => body.heads || null);
      answer.catch(() => this.answers.delete(key)); // a failure is not kept
    }
    this.answers.set(key, answer);
    while (this.answers.size > KEEP_ANSWERS) this.answers.delete(this.answers.keys().next().value);
    return answer;
  }

  // The panel painted the rewire at `step`: show its heads there (a layer with heads only).
  async show(panel, step) {
    if (!panel.layer.heads || step === null || step === undefined) return;
    const strip = panel.headStrip || this.create(panel);
    strip.root.dataset.want = String(step);
    let heads;
    try {
      heads = await this.heads(panel.layer.index, step);
    } catch (error) {
      if (strip.root.dataset.want === String(step)) strip.heading.textContent = `heads: ${error.message}`;
      return;
    }
    if (panel.removed || strip.root.dataset.want !== String(step)) return; // a newer rewire is on its way
    this.draw(panel, strip, heads || [], step);
  }

  // { root: .head-strip (data-layer, data-step once drawn), heading, groups }, under the plot.
  create(panel) {
    const root = document.createElement("div");
    root.className = "head-strip";
    root.dataset.layer = String(panel.layer.index);
    root.setAttribute("aria-label", `attention heads of ${panel.layer.name}`);
    const heading = document.createElement("div");
    heading.className = "head-strip-title";
    heading.textContent = "heads";
    const groups = document.createElement("div");
    groups.className = "head-groups";
    root.append(heading, groups);
    panel.root.insertBefore(root, panel.readout);
    panel.headStrip = { root, heading, groups };
    return panel.headStrip;
  }

  draw(panel, strip, heads, step) {
    const parts = [];
    for (const head of heads) {
      const last = parts[parts.length - 1];
      if (last && last.part === head.part) last.heads.push(head);
      else parts.push({ part: head.part, heads: [head] });
    }
    const dead = heads.filter((head) => head.active === 0).length;
    const perPart = parts.length ? parts[0].heads.length : 0;
    strip.heading.replaceChildren();
    const label = document.createElement("span");
    label.textContent = parts.length > 1
      ? `${perPart} heads × ${parts.map((part) => part.part).join(" | ")}`
      : `${heads.length} heads`;
    const deadText = document.createElement("span");
    deadText.className = dead ? "head-dead-count dead" : "head-dead-count";
    deadText.textContent = ` · ${dead} dead`;
    strip.heading.append(label, deadText);
    strip.groups.replaceChildren(...parts.map(({ part, heads: group }) => {
      const box = document.createElement("div");
      box.className = "head-group";
      if (part !== null) {
        box.dataset.part = part;
        const name = document.createElement("span");
        name.className = "head-part";
        name.textContent = part; // a stored name: text, never markup
        box.append(name);
      }
      for (const head of group) box.append(this.cell(panel, head));
      return box;
    }));
    strip.root.dataset.step = String(step);
    strip.root.dataset.dead = String(dead);
    strip.root.dataset.heads = String(heads.length);
  }

  cell(panel, head) {
    const cell = document.createElement("span");
    cell.className = head.active === 0 ? "head-cell dead" : "head-cell";
    if (head.part !== null) cell.dataset.part = head.part;
    cell.dataset.head = String(head.head);
    cell.dataset.active = String(head.active);
    cell.dataset.density = String(head.density);
    cell.style.background = densityColour(head.density);
    const text = describe(head);
    cell.title = text;
    cell.setAttribute("aria-label", text);
    cell.setAttribute("role", "img");
    cell.addEventListener("mouseenter", () => {
      panel.readout.textContent = `${panel.layer.name} · ${text}`;
      panel.readout.dataset.state = head.active === 0 ? "dead" : "head";
    });
    return cell;
  }
}
