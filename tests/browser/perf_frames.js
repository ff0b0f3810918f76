// Feeds synthetic 1024 × 1024 topology frames through the dashboard's real apply + draw path
// (window.sparsescope.feed → RunModel → requestAnimationFrame → Plotly) and times them.
async ({ rows, cols, density, deltas, burst }) => {
  const hook = window.sparsescope;
  const { encodeBinaryFrame } = hook.codec;
  const size = rows * cols;
  let seed = 12345;
  const random = () => { seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0; return seed / 4294967296; };
  const nextFrame = () => new Promise((resolve) => requestAnimationFrame(() => resolve()));
  const settle = async () => { await nextFrame(); await nextFrame(); await hook.drawn(); };
  const toBase64 = (bytes) => {
    let text = "";
    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(text);
  };
  const mask = new Uint8Array(size);
  for (let i = 0; i < size; i++) mask[i] = random() < density ? 1 : 0;
  const packed = new Uint8Array(Math.ceil(size / 8));
  for (let i = 0; i < size; i++) if (mask[i]) packed[i >> 3] |= 1 << (i & 7);
  let active = mask.reduce((a, b) => a + b, 0);
  hook.openLocal({ id: "0000000000000000", name: "synthetic 1024²" });
  location.hash = "#/run";
  let seq = 1;
  hook.feed({ type: "meta", seq: seq++, step: 0, layers: [{ name: "big", shape: [rows, cols], matrix: [rows, cols], density }],
              image_shape: null, input_shape: [cols], task: "synthetic", total_steps: 1000, method: "set",
              schedule: { interval_steps: 10, kind: "constant" } });
  const t0 = performance.now();
  hook.feed({ type: "topology", seq: seq++, step: 0, layer: "big", index: 0, shape: [rows, cols], keyframe: true,
              active, bits: toBase64(packed) });
  const keyframeApply = performance.now() - t0;
  await settle();
  const keyframeTotal = performance.now() - t0;
  // A delta swaps `turn` active connections for `turn` inactive ones, as SET does at 30%.
  const makeDelta = (step, binary) => {
    const turn = Math.round(active * 0.3);
    const added = [];
    const removed = [];
    while (added.length < turn) { const i = (random() * size) | 0; if (!mask[i]) { mask[i] = 2; added.push(i); } }
    while (removed.length < turn) { const i = (random() * size) | 0; if (mask[i] === 1) { mask[i] = 3; removed.push(i); } }
    for (const i of added) mask[i] = 1;
    for (const i of removed) mask[i] = 0;
    const a = Uint32Array.from(added.sort((x, y) => x - y));
    const r = Uint32Array.from(removed.sort((x, y) => x - y));
    const header = { type: "topology", seq: seq++, step, layer: "big", index: 0, shape: [rows, cols], keyframe: false, active };
    if (binary) {
      const payload = new Uint8Array(4 * (a.length + r.length));
      payload.set(new Uint8Array(a.buffer), 0);
      payload.set(new Uint8Array(r.buffer), 4 * a.length);
      return encodeBinaryFrame({ ...header, n_added: a.length, n_removed: r.length }, payload);
    }
    return { ...header, added: toBase64(new Uint8Array(a.buffer)), removed: toBase64(new Uint8Array(r.buffer)) };
  };
  const single = [];
  for (let k = 1; k <= deltas; k++) {
    const message = makeDelta(k * 10, k % 2 === 0);
    const draws = hook.perf.draws;
    const start = performance.now();
    hook.feed(message);
    const apply = performance.now() - start;
    await nextFrame();
    const drawSync = hook.perf.drawMs[hook.perf.drawMs.length - 1];
    await hook.heatmapsPainted();
    const heatmapPainted = performance.now() - start; // arrival → the layer's picture painted
    await hook.drawn();
    const paint = hook.perf.paintMs[hook.perf.paintMs.length - 1]; // requestAnimationFrame → painted
    single.push({ apply, drawSync, paint, applyDraw: apply + paint, heatmapPainted, total: performance.now() - start,
                  drew: hook.perf.draws - draws });
  }
  // Burst: many frames in one task; the page must apply all and draw only the newest.
  const messages = [];
  for (let k = 0; k < burst; k++) messages.push(makeDelta((deltas + 1 + k) * 10, false));
  const drawsBefore = hook.perf.draws;
  const skippedBefore = hook.perf.framesSkipped;
  const framesBefore = hook.framesApplied;
  const start = performance.now();
  for (const message of messages) hook.feed(message);
  const burstApply = performance.now() - start;
  await settle();
  const layer = hook.model.layers[0];
  let shownActive = 0;
  const state = layer.state(layer.frames.length - 1);
  for (let i = 0; i < state.mask.length; i++) shownActive += state.mask[i];
  let expectedActive = 0;
  for (let i = 0; i < size; i++) expectedActive += mask[i];
  return {
    keyframeApply, keyframeTotal, single,
    burst: { frames: hook.framesApplied - framesBefore, draws: hook.perf.draws - drawsBefore,
             skipped: hook.perf.framesSkipped - skippedBefore, applyMs: burstApply,
             totalMs: performance.now() - start },
    shownActive, expectedActive, datasetActive: Number(document.getElementById("heatmap-0").dataset.active),
    lastStep: hook.lastStep, animationFrames: hook.perf.animationFrames, draws: hook.perf.draws,
  };
}
