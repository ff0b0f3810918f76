// The layer panels of a view: which are on screen, and drawing the rewire the player shows in
// those only. Shared by the run view (every layer) and the compare view (one layer per run).
//
// A panel is fetched and drawn only while it is on screen (IntersectionObserver); one far off
// screen gives its plot's memory back. Each panel has at most one draw in flight: a newer
// position meanwhile only marks it dirty, so scrubbing fast shows the newest picture and never
// queues the ones in between.
import { LayerPanel } from "./heatmap.js";

const NEAR = "150px"; // drawn a little before it scrolls in, so scrolling rarely shows a blank
const FAR = "2000px"; // beyond this a panel releases its plot

export class PanelSet {
  // views(panel) → the ViewCache of the panel's run; target() → { step, mode, palette } to show.
  // onSettled(): a panel found it already shows what is wanted (a repaint asked for while it
  // was drawing, which turned out to be the picture it drew): nothing is drawn, but whoever
  // waits for "every visible panel shows the step" may now be done.
  constructor({ views, target, onPainted = () => {}, onSettled = () => {} }) {
    this.views = views;
    this.target = target;
    this.onPainted = onPainted;
    this.onSettled = onSettled;
    this.panels = [];
    this.visible = new Set();
    this.near = new IntersectionObserver((entries) => this.seen(entries), { rootMargin: NEAR });
    this.far = new IntersectionObserver((entries) => {
      for (const entry of entries) if (!entry.isIntersecting) this.panelOf(entry.target)?.release();
    }, { rootMargin: FAR });
    this.generation = 0;
    this.observed = false; // the observer has said which panels are on screen at least once
  }

  add(container, layer, options) {
    const panel = new LayerPanel(container, layer, options);
    panel.busy = false;
    panel.dirty = false;
    this.panels.push(panel);
    this.near.observe(panel.root);
    this.far.observe(panel.root);
    return panel;
  }

  panelOf(element) {
    return this.panels.find((panel) => panel.root === element) || null;
  }

  seen(entries) {
    this.observed = true;
    for (const entry of entries) {
      const panel = this.panelOf(entry.target);
      if (!panel) continue;
      if (entry.isIntersecting) { this.visible.add(panel); this.paint(panel); } else this.visible.delete(panel);
    }
  }

  // The player moved (or the mode, palette or a panel's size changed): redraw the visible ones.
  refresh() {
    for (const panel of this.visible) this.paint(panel);
  }

  // Fetch the views of the rewires about to be shown (playing), for the visible panels.
  prefetch(steps) {
    const { mode } = this.target();
    for (const panel of this.visible) {
      const [rows, cols] = panel.gridFor(mode);
      for (const step of steps) this.views(panel).prefetch(panel.layer.index, step, rows, cols);
    }
  }

  async paint(panel) {
    if (panel.busy) { panel.dirty = true; return; }
    const { step, mode, palette } = this.target();
    if (step === null || step === undefined) return;
    const [rows, cols] = panel.gridFor(mode);
    const key = `${step}|${mode}|${rows}x${cols}|${palette.label}`;
    if (panel.shownKey === key && panel.view) {
      // Already shown. A repaint asked for meanwhile (dirty) is answered by it: left set,
      // settled() would count this panel unpainted for good (the label said "drawing…").
      if (panel.dirty) { panel.dirty = false; this.onSettled(panel); }
      return;
    }
    panel.busy = true;
    panel.dirty = false;
    let drawn = false;
    try {
      const view = await this.views(panel).get(panel.layer.index, step, rows, cols);
      drawn = !panel.removed && this.visible.has(panel) && (await panel.draw(view, mode, palette));
      if (drawn) panel.shownKey = key;
    } catch (error) {
      if (!panel.removed) panel.stats.textContent = `could not load this rewire: ${error.message}`;
    } finally {
      panel.busy = false;
    }
    // After `busy` is cleared: onPainted asks settled(), which counts a busy panel as unpainted.
    if (drawn) this.onPainted(panel);
    const now = this.target();
    if (!panel.removed && this.visible.has(panel) && (panel.dirty || now.step !== step || now.mode !== mode)) {
      this.paint(panel);
    }
  }

  // True once every visible panel shows `step` (the tests and the bench wait on it). Not
  // before the observer has reported: until then no panel counts as visible, and "every
  // visible panel" would be true of a page that has drawn nothing yet.
  settled(step) {
    if (this.panels.length && !this.observed) return false;
    for (const panel of this.visible) {
      if (panel.busy || panel.dirty || !panel.view || panel.view.step !== step) return false;
      if (panel.plot.dataset.step === undefined) return false;
    }
    return true;
  }

  clear() {
    this.near.disconnect();
    this.far.disconnect();
    for (const panel of this.panels) panel.remove();
    this.panels = [];
    this.visible.clear();
  }
}
