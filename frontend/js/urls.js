// Every address the dashboard asks the server for, declared once: one function per endpoint
// (backend/api/routes; docs/api.md). Run ids go through encodeURIComponent and query strings
// through URLSearchParams; api.js sends them with the token (socketUrl makes a stream's path a
// ws:// address).

const RUNS = "/api/runs";

const run = (id) => `${RUNS}/${encodeURIComponent(id)}`;
const withQuery = (path, params) => `${path}?${new URLSearchParams(params)}`;

// The server's OpenAPI document (the new-run form is generated from its RunConfig).
export const openapi = () => "/openapi.json";
export const health = () => "/api/health";

// POST: start a run (GET: the first page of the list, as runList()).
export const runs = () => RUNS;
// GET: a page of the runs list, newest first: { limit, status, q } (empty ones left out); the
// next page's address comes in the answer's Link header.
export const runList = (params = {}) => {
  const given = Object.entries(params).filter(([, value]) => value !== undefined && value !== null && value !== "");
  return given.length ? withQuery(RUNS, Object.fromEntries(given)) : RUNS;
};
export const plan = () => `${RUNS}/plan`;
export const importRun = () => `${RUNS}/import`;

// GET: one run's stored header; DELETE: the run.
export { run };
export const stop = (id) => `${run(id)}/stop`;
// DELETE: `force` also deletes a run another live process writes (that writer then stops).
export const deleteRun = (id, { force = false } = {}) => (force ? withQuery(run(id), { force: "true" }) : run(id));
export const exportRun = (id) => `${run(id)}/export`;
// The trained weights and masks (a .pt file).
export const model = (id) => `${run(id)}/model`;

// The rewire steps, layer layout and last seq the page opens a run at.
export const rewires = (id) => `${run(id)}/rewires`;
// Downsampled metric series: the first 64 fields logged, or those in `fields` (at most 64).
export const metrics = (id, buckets, fields = null) =>
  withQuery(`${run(id)}/metrics`, fields ? { buckets, fields: fields.join(",") } : { buckets });
// Every numeric field name a run logged, by event type.
export const metricNames = (id) => `${run(id)}/metrics/names`;
export const rewireSeries = (id, buckets) => withQuery(`${run(id)}/rewire-series`, { buckets });
// How a logged metric moved across each rewire: params { window, metric }.
export const rewireResponse = (id, params) => withQuery(`${run(id)}/rewire-response`, params);
// Layer `layer` (its index) at the newest rewire at or before `step`, rows × cols pixels at most.
export const view = (id, { layer, step, rows, cols }) => withQuery(`${run(id)}/view`, { layer, step, rows, cols });

// What each layer's mask would buy at `step` (dst_core.compact's formats, from the server's cost
// table) and its distances to constant fan-in and 2:4; `…/series`: the same over the run.
export const speedup = (id, { step, batch = 1 }) => withQuery(`${run(id)}/speedup`, { step, batch });
export const speedupSeries = (id, { points }) => withQuery(`${run(id)}/speedup/series`, { points });

export const topology = (id, { layer, step }) => withQuery(`${run(id)}/topology`, { layer, step });
export const topologySeries = (id, { layer, points }) => withQuery(`${run(id)}/topology/series`, { layer, points });
export const topologyModel = (id, { step }) => withQuery(`${run(id)}/topology/model`, { step });

// Churn of layer `layer` (index or name) from rewire 0 to the newest rewire at or before `step`:
// how often each position changed state, the flip rate per rewire, and rows × cols pixels at
// most of mean toggles per position.
export const churn = (id, { layer, step, rows, cols }) => withQuery(`${run(id)}/churn`, { layer, step, rows, cols });

// Compare: how far the masks of one layer (a name or an index) in two or more runs overlap.
// `step` null: each run's newest rewire; else each run's newest rewire at or before it.
export const compareOverlap = (ids, { layer, step = null }) =>
  withQuery("/api/compare/overlap", step === null || step === undefined
    ? { runs: ids.join(","), layer } : { runs: ids.join(","), layer, step });
// … and the Jaccard index of every pair of them over the run, at most `points` steps.
export const compareOverlapSeries = (ids, { layer, points }) =>
  withQuery("/api/compare/overlap/series", { runs: ids.join(","), layer, points });

// The run's websocket from seq `fromSeq` on; `mode` "announce": topology events as headers only.
export const stream = (id, { fromSeq, mode }) =>
  withQuery(`/ws/runs/${encodeURIComponent(id)}`, { from_seq: fromSeq, topology: mode });
