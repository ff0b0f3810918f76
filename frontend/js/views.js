// Panel-resolution views of one run's layers, fetched on demand and kept in a small LRU cache.
//
// The cache is bounded by bytes, not entries, so its size depends on the panels on screen and
// never on the run's length: scrubbing back to a rewire seen a moment ago costs nothing, and a
// run with thousands of rewires holds no more than one with ten.
import { api } from "./api.js";
import { decodeView } from "./codec.js";
import * as urls from "./urls.js";

export const CACHE_BYTES = 48 * 1024 * 1024;
const FETCHES_AT_ONCE = 6; // browsers allow 6 connections per host; more would only queue there

function sizeOf(view) {
  return view.kept.byteLength * 4 + 256;
}

export class ViewCache {
  constructor(runId, { limitBytes = CACHE_BYTES } = {}) {
    this.runId = runId;
    this.limitBytes = limitBytes;
    this.entries = new Map(); // key → { promise, bytes }, oldest first (Map keeps insertion order)
    this.bytes = 0;
    this.running = 0;
    this.waiting = []; // [start()] of fetches beyond FETCHES_AT_ONCE, newest last
    this.fetched = 0; // answers received from the server (tests and the bench read it)
    this.closed = false;
  }

  static key(layer, step, rows, cols) {
    return `${layer}|${step}|${rows}x${cols}`;
  }

  has(layer, step, rows, cols) {
    return this.entries.has(ViewCache.key(layer, step, rows, cols));
  }

  // The view of `layer` at the newest rewire at or before `step`, R × C pixels at most.
  get(layer, step, rows, cols) {
    const key = ViewCache.key(layer, step, rows, cols);
    const entry = this.entries.get(key);
    if (entry) {
      this.entries.delete(key); // most recently used goes last
      this.entries.set(key, entry);
      return entry.promise;
    }
    const fresh = { promise: null, bytes: 0 };
    fresh.promise = this.schedule(() => api(urls.view(this.runId, { layer, step, rows, cols })))
      .then((answer) => {
        this.fetched += 1;
        const view = decodeView(answer);
        fresh.bytes = sizeOf(view);
        if (this.entries.get(key) === fresh) { this.bytes += fresh.bytes; this.evict(); }
        return view;
      })
      .catch((error) => {
        if (this.entries.get(key) === fresh) this.entries.delete(key); // a failure is not cached
        throw error;
      });
    this.entries.set(key, fresh);
    return fresh.promise;
  }

  // Warm the cache for a rewire about to be shown (playing: the next ones); errors are dropped.
  prefetch(layer, step, rows, cols) {
    if (this.has(layer, step, rows, cols)) return;
    this.get(layer, step, rows, cols).catch(() => undefined);
  }

  schedule(fetcher) {
    return new Promise((resolve, reject) => {
      const start = () => {
        this.running += 1;
        fetcher().then(resolve, reject).finally(() => {
          this.running -= 1;
          const next = this.waiting.pop(); // newest first: the picture asked for last is on screen
          if (next) next();
        });
      };
      if (this.running < FETCHES_AT_ONCE) start(); else this.waiting.push(start);
    });
  }

  evict() {
    for (const [key, entry] of this.entries) {
      if (this.bytes <= this.limitBytes) break;
      if (!entry.bytes) continue; // still in flight
      this.entries.delete(key);
      this.bytes -= entry.bytes;
    }
  }

  close() {
    this.closed = true;
    this.entries.clear();
    this.waiting = [];
    this.bytes = 0;
  }
}
