// One run as the browser knows it: every event received, kept so any rewire can be shown again.
//
// Topology frames are stored exactly as received (keyframes packed, deltas as index lists), so
// scrubbing reconstructs any rewire from the nearest keyframe plus the deltas after it, while
// the newest state is kept up to date incrementally (O(changes) per delta).
import { normaliseTopology, unpackBits } from "./codec.js";

const POPCOUNT = new Uint8Array(256).map((_, byte) => {
  let count = 0;
  for (let value = byte; value; value >>= 1) count += value & 1;
  return count;
});

export function countPacked(packed) {
  let count = 0;
  for (let i = 0; i < packed.length; i++) count += POPCOUNT[packed[i]];
  return count;
}

// Binary search over `length` ascending steps (`stepOf(i)`): the last index whose step is at
// or before `step`, -1 when none.
function lastAtOrBefore(length, stepOf, step) {
  let lo = 0;
  let hi = length - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (stepOf(mid) <= step) { found = mid; lo = mid + 1; } else hi = mid - 1;
  }
  return found;
}

// Net changes between two masks of one layer (a keyframe stored at a rewire replaces its delta).
function diffMasks(before, after) {
  let added = 0;
  let removed = 0;
  for (let i = 0; i < after.length; i++) {
    if (after[i] !== before[i]) { if (after[i]) added++; else removed++; }
  }
  const addedIdx = new Uint32Array(added);
  const removedIdx = new Uint32Array(removed);
  let a = 0;
  let r = 0;
  for (let i = 0; i < after.length; i++) {
    if (after[i] !== before[i]) { if (after[i]) addedIdx[a++] = i; else removedIdx[r++] = i; }
  }
  return { added: addedIdx, removed: removedIdx };
}

function applyDelta(mask, frame) {
  const { added, removed } = frame;
  for (let i = 0; i < removed.length; i++) mask[removed[i]] = 0;
  for (let i = 0; i < added.length; i++) mask[added[i]] = 1;
}

// A mask at one frame of a layer, moved forward cheaply or rebuilt from a keyframe.
class Cursor {
  constructor(size) { this.index = -1; this.mask = new Uint8Array(size); this.active = 0; }
}

export class LayerHistory {
  constructor(info, index) {
    const [rows, cols] = info.matrix;
    this.name = info.name;
    this.index = index;
    this.shape = info.shape;
    this.rows = rows;
    this.cols = cols;
    this.size = rows * cols;
    this.targetDensity = info.density;
    this.frames = []; // {step, keyframe, packed?, added, removed, active, storedActive}
    this.live = new Cursor(this.size); // always at the newest frame
    this.view = null; // created on first scrub back
  }

  // Apply one normalised topology event (frames arrive in seq order). Returns the stored frame.
  push(event) {
    const live = this.live;
    let frame;
    if (event.keyframe) {
      const next = unpackBits(event.packed, this.size);
      const diff = this.frames.length === 0
        ? { added: new Uint32Array(0), removed: new Uint32Array(0) }
        : diffMasks(live.mask, next);
      live.mask = next;
      live.active = countPacked(event.packed);
      frame = { step: event.step, keyframe: true, packed: event.packed, ...diff };
    } else {
      applyDelta(live.mask, event);
      live.active += event.added.length - event.removed.length;
      frame = { step: event.step, keyframe: false, added: event.added, removed: event.removed };
    }
    frame.active = live.active;
    frame.storedActive = event.active;
    this.frames.push(frame);
    live.index = this.frames.length - 1;
    return frame;
  }

  // Index of the newest frame at or before `step` (-1 when none).
  frameAt(step) {
    return lastAtOrBefore(this.frames.length, (i) => this.frames[i].step, step);
  }

  // The mask at frame `index`, with that frame's net changes; reuses the view cursor when it can.
  state(index) {
    if (index < 0 || index >= this.frames.length) return null;
    const frame = this.frames[index];
    if (index === this.live.index) return { frame, index, mask: this.live.mask, active: this.live.active };
    if (!this.view) this.view = new Cursor(this.size);
    const view = this.view;
    let keyIndex = index;
    while (!this.frames[keyIndex].keyframe) keyIndex--;
    if (!(view.index >= keyIndex && view.index <= index)) {
      unpackBits(this.frames[keyIndex].packed, this.size, view.mask);
      view.active = countPacked(this.frames[keyIndex].packed);
      view.index = keyIndex;
    }
    for (let i = view.index + 1; i <= index; i++) {
      const step = this.frames[i];
      applyDelta(view.mask, step);
      view.active += step.added.length - step.removed.length;
    }
    view.index = index;
    return { frame, index, mask: view.mask, active: view.active };
  }
}

const EVAL_KEYS = ["train_loss", "train_accuracy", "test_loss", "test_accuracy"];

export class RunModel {
  constructor(run) {
    this.id = run.id;
    this.name = run.name || run.id;
    this.run = run;
    this.status = run.status || "queued";
    this.error = run.error || null;
    this.meta = null;
    this.layers = [];
    this.steps = []; // every step that has topology frames, ascending
    this.lastSeq = 0;
    this.ended = false;
    this.metrics = { step: [], loss: [], accuracy: [], density: [], itop_rate: [], layer: {} };
    this.evals = { step: [], epoch: [] };
    for (const key of EVAL_KEYS) this.evals[key] = [];
    this.rewires = { step: [], added: [], removed: [], turnover: [], itop_rate: [], layer: {} };
    this.framesApplied = 0;
  }

  // Returns what changed: "meta", "topology", "metrics", "status", "end" or null.
  handle(event) {
    if (event.seq !== undefined && event.seq !== null) {
      if (event.seq <= this.lastSeq) return null; // a resumed stream may repeat: never apply twice
      this.lastSeq = event.seq;
    }
    switch (event.type) {
      case "meta":
        this.meta = event;
        this.layers = event.layers.map((info, index) => new LayerHistory(info, index));
        return "meta";
      case "topology": return this.pushTopology(normaliseTopology(event));
      case "metrics": return this.pushMetrics(event);
      case "eval":
        this.evals.step.push(event.step);
        this.evals.epoch.push(event.epoch);
        for (const key of EVAL_KEYS) this.evals[key].push(event[key] ?? null);
        return "metrics";
      case "rewire": return this.pushRewire(event);
      case "status":
        this.status = event.status;
        if (event.error) this.error = event.error;
        return "status";
      case "end":
        this.ended = true;
        return "end";
      default: return null;
    }
  }

  pushTopology(event) {
    let layer = this.layers[event.index];
    if (!layer) {
      // A stream that starts without meta (should not happen): lay the layer out from the frame.
      layer = new LayerHistory({ name: event.layer, matrix: event.shape, shape: event.shape }, event.index);
      this.layers[event.index] = layer;
    }
    layer.push(event);
    if (this.steps.length === 0 || this.steps[this.steps.length - 1] < event.step) this.steps.push(event.step);
    this.framesApplied += 1;
    return "topology";
  }

  pushMetrics(event) {
    const m = this.metrics;
    m.step.push(event.step);
    m.loss.push(event.loss ?? null);
    m.accuracy.push(event.accuracy ?? null);
    m.density.push(event.density ?? null);
    m.itop_rate.push(event.itop_rate ?? null);
    for (const [name, value] of Object.entries(event.layer_density || {})) {
      (m.layer[name] ||= { step: [], value: [] });
      m.layer[name].step.push(event.step);
      m.layer[name].value.push(value);
    }
    return "metrics";
  }

  pushRewire(event) {
    const r = this.rewires;
    let added = 0;
    let removed = 0;
    for (const [name, change] of Object.entries(event.layers || {})) {
      added += change.added; removed += change.removed;
      (r.layer[name] ||= { added: [], removed: [], active: [], step: [] });
      r.layer[name].step.push(event.step);
      r.layer[name].added.push(change.added);
      r.layer[name].removed.push(change.removed);
      r.layer[name].active.push(change.active);
    }
    r.step.push(event.step);
    r.added.push(added);
    r.removed.push(removed);
    r.turnover.push(event.turnover ?? null);
    r.itop_rate.push(event.itop_rate ?? null);
    return "metrics";
  }

  // Index into `steps` of the newest topology step at or before `step`.
  stepIndexAt(step) {
    return lastAtOrBefore(this.steps.length, (i) => this.steps[i], step);
  }
}
