// sparsescope dashboard: the router. It shows one view at a time (runs list, new-run form, the
// run view, compare) and wires the top bar; each view lives in its own module.
//
// Routes: #/runs · #/new · #/run/<id> (opens at the newest rewire) · #/run/<id>?step=S (the
// rewire at or before step S) · #/compare/<id>,<id>,…
import { api, request } from "./api.js";
import * as codec from "./codec.js";
import { CompareView } from "./compare_view.js";
import { RunForm } from "./form.js";
import { PALETTES } from "./heatmap.js";
import { plotlyNow } from "./plotly.js";
import { RunsList } from "./runs.js";
import { inlineViews } from "./inline_views.js";
import { RunView } from "./run_view.js";
import { isActive } from "./statuses.js";
import * as urls from "./urls.js";

const $ = (id) => document.getElementById(id);
const RUNS_POLL_MS = 3000;
const VIEWS = ["runs", "new", "run", "compare"];
const CONNECTION_TEXT = { connecting: "connecting…", open: "live", retrying: "reconnecting…",
                          closed: "no stream", ended: "replay complete", unreachable: "server unreachable" };

let serverReachable = true; // false while the runs poll gets no answer at all
let palette = PALETTES[localStorage.getItem("sparsescope.palette") || "standard"] || PALETTES.standard;
let current = "runs";

// ---------------------------------------------------------------- top bar

function setStatus(status) {
  const badge = $("status");
  badge.textContent = status;
  badge.dataset.status = status;
  $("stop").disabled = !isActive(status);
}

// The badge, Stop and the name beside them are the run view's run. On another page (the runs
// list, the form, compare) that run is not on screen: Stop is hidden there (the runs list has
// a Stop per run), and the name is a link back to the run, so the badge says whose status it
// is and nothing acts on a run the page does not show.
let shownRunName = "";
function renderShownRun() {
  const onRunView = current === "run";
  const id = runView.id;
  const label = $("run-label");
  $("stop").hidden = !onRunView;
  $("status").hidden = !onRunView && !id;
  $("status").title = id ? `Status of ${shownRunName}` : "";
  if (onRunView || !id) {
    label.textContent = shownRunName;
    return;
  }
  const link = document.createElement("a");
  link.id = "run-label-link";
  link.href = `#/run/${encodeURIComponent(id)}`;
  link.textContent = shownRunName; // a name is data, never markup
  link.title = `Open ${shownRunName}: the run this status belongs to`;
  label.replaceChildren("last opened: ", link);
}

function setConnection(state) {
  // While the server does not answer, a stream's retry says "reconnecting…" only once it is back.
  if (state === "retrying" && !serverReachable) state = "unreachable";
  $("connection").dataset.state = state;
  $("connection-text").textContent = CONNECTION_TEXT[state] || state;
}

function runsMessage(text) {
  $("runs-message").textContent = text;
}

const runView = new RunView({
  palette: () => palette,
  onStatus: setStatus,
  onConnection: setConnection,
  onLabel: (text) => { shownRunName = text; renderShownRun(); },
  canConnect: () => serverReachable,
});
const compareView = new CompareView({ palette: () => palette, message: runsMessage });

// Test hook: the run on screen and the counters the browser tests and the bench read.
window.sparsescope = {
  codec,
  modules: new URL(".", import.meta.url).href, // this build's js/ folder: `import(modules + "codec.js")`
  // Panels painted by the run view since the page loaded.
  get paints() { return runView.paints; },
  // When (performance.now(), ms after this page's navigation began) the open run's first panel
  // was painted; null before. A link's and a notebook cell's open time (bench/dashboard_scale.py).
  get firstPanelAt() { return runView.firstPanelAt ?? null; },
  // Inside a notebook page: whether this view opened, painted, and how many others it waits for.
  get inline() { return inlineViews.state(); },
  // Rewires known to the page, and the newest one's step (grows while following live).
  get rewires() { return runView.player.steps.length; },
  get lastStep() { const steps = runView.player.steps; return steps.length ? steps[steps.length - 1] : 0; },
  get model() {
    const run = runView.run;
    return run ? { id: run.id, name: run.name, status: run.status, steps: runView.player.steps } : null;
  },
  get position() { return runView.player.position; },
  get player() { return runView.player; },
  get comparePlayer() { return compareView.player; },
  get views() { return runView.views; },
  get panels() { return runView.panels ? runView.panels.panels : []; },
  dropConnection: () => runView.stream && runView.stream.drop(),
  // True once every visible panel shows the rewire on screen.
  settled: () => runView.settled(),
};

// ---------------------------------------------------------------- routing

function parseHash() {
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
  const [, view = "", arg = ""] = path.split("/");
  const params = new URLSearchParams(query);
  return { view: VIEWS.includes(view) ? view : "runs", arg: decodeURIComponent(arg), params };
}

function route() {
  const { view, arg, params } = parseHash();
  // Another view, or another run: it starts at its top (a run opened from the form showed
  // its charts at the form's scroll position, the "Queued…" line above the fold).
  if (view !== current || (view === "run" && arg && arg !== runView.id)) window.scrollTo(0, 0);
  current = view;
  for (const section of VIEWS) {
    $(`view-${section}`).hidden = section !== view;
    $(`tab-${section}`).setAttribute("aria-current", section === view ? "page" : "false");
  }
  renderShownRun();
  if (view === "run" && arg) {
    const raw = params.get("step");
    const step = raw !== null && /^\d+$/.test(raw) ? Number(raw) : null;
    if (runView.id !== arg) openRunById(arg, step);
    else if (step !== null && step !== runView.player.step) runView.player.seekStep(step);
  }
  if (view === "new") loadForm().then(() => cloneInto(params.get("from")));
  if (view === "run") { resizePlots($("view-run")); runView.chartsDirty(); }
  if (view === "compare") {
    const ids = arg.split(",").filter(Boolean);
    // A compare link ticks its runs in the picker (and the runs list) too.
    if (ids.length >= 2) for (const id of ids) runsList.selected.add(id);
    if (ids.length === 1) $("compare-error").textContent = `A comparison needs two or more runs: this link names one (${ids[0]}).`;
    if (ids.length >= 2 && ids.join(",") !== compareView.key) compareView.open(ids);
    renderPicker();
    resizePlots($("view-compare"));
  }
  if (view === "runs") runsList.refresh();
}

function resizePlots(root) {
  // Plots drawn while their view was hidden have no size yet.
  requestAnimationFrame(() => {
    for (const div of root.querySelectorAll(".js-plotly-plot")) {
      if (div.isConnected && div._fullLayout) plotlyNow()?.Plots.resize(div);
    }
  });
}

function go(hash) {
  if (location.hash === hash) route(); else location.hash = hash;
}

// A run named in the URL: looked up in the list first, so a deleted run's link gives a message
// on the runs view instead of a failed request (which the browser would log as an error).
// Resolves once the page itself comes within `margin` of the screen. Inside a notebook, a cell's
// view far down the page would otherwise open its run (layout, views, the server's time) while
// the one being read opens: several views share one main thread and one server.
function pageNearScreen(margin = "400px") {
  if (document.body.dataset.embedded !== "true") return Promise.resolve();
  return new Promise((resolve) => {
    const observer = new IntersectionObserver((entries) => {
      if (!entries.some((entry) => entry.isIntersecting)) return;
      observer.disconnect();
      resolve();
    }, { rootMargin: margin });
    observer.observe(document.body);
  });
}

async function openRunById(id, step = null) {
  await pageNearScreen();
  if (parseHash().arg !== id) return; // another run was asked for meanwhile
  inlineViews.opening();
  const exists = await runsList.exists(id);
  if (exists === null) { inlineViews.finished(); return; } // no server: the poll says so
  if (!exists) {
    inlineViews.finished();
    runsMessage(`Run ${id} does not exist (deleted?). Pick another one below.`);
    go("#/runs");
    return;
  }
  try {
    await runView.open(id, { step });
  } catch (error) {
    inlineViews.finished();
    runsMessage(`Could not open run ${id}: ${error.message}`);
    go("#/runs");
  }
}

function openRun(run) {
  const hash = `#/run/${run.id}`;
  if (location.hash !== hash) location.hash = hash; else if (runView.id !== run.id) openRunById(run.id);
}

// ---------------------------------------------------------------- actions

// The top bar's Start starts what the New run form holds when it was edited (its own
// button's path: a refused field is named there), else the defaults; its label says which.
async function startRun() {
  const button = $("start");
  if (runForm.edited()) {
    button.disabled = true;
    try {
      if (!(await runForm.submit())) go("#/new");
    } finally {
      button.disabled = false;
    }
    return;
  }
  button.disabled = true;
  try {
    const run = await api(urls.runs(), { method: "POST", body: {} });
    openRun(run);
    runsList.refresh();
  } catch (error) {
    $("run-label").textContent = `Start failed: ${error.message}`;
  } finally {
    button.disabled = false;
  }
}

async function stopRun() {
  const id = runView.id;
  if (!id) return;
  try {
    const run = await api(urls.stop(id), { method: "POST" });
    if (runView.id === run.id) setStatus(run.status);
  } catch (error) {
    $("run-label").textContent = `Stop failed: ${error.message}`;
  }
  runsList.refresh();
}

function togglePalette() {
  const name = palette === PALETTES.standard ? "colorblind" : "standard";
  palette = PALETTES[name];
  localStorage.setItem("sparsescope.palette", name);
  applyPalette();
  runView.panels?.refresh();
  runView.chartsDirty();
  compareView.panels?.refresh();
}

function applyPalette() {
  const name = palette === PALETTES.colorblind ? "colorblind" : "standard";
  document.body.dataset.palette = name;
  $("palette").setAttribute("aria-pressed", String(name === "colorblind"));
  const root = document.documentElement.style;
  for (const key of ["inactive", "kept", "added", "removed"]) root.setProperty(`--${key}`, palette[key]);
}

function renderPicker() {
  const options = $("compare-options");
  const chosen = new Set(runsList.selected);
  options.replaceChildren(...runsList.runs.map((run) => {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = run.id;
    box.checked = chosen.has(run.id);
    box.addEventListener("change", () => {
      if (box.checked) runsList.selected.add(run.id); else runsList.selected.delete(run.id);
      runsList.render();
    });
    // The id where names repeat: two imports of one file read the same otherwise.
    const repeated = runsList.repeated.has(run.name);
    label.append(box, ` ${run.name}${repeated ? ` · ${run.id}` : ""} (${run.status})`);
    return label;
  }));
}

function compareSelected() {
  const ids = [...runsList.selected];
  if (ids.length < 2) { runsMessage("Pick at least two runs to compare."); return; }
  go(`#/compare/${ids.join(",")}`);
}

// ---------------------------------------------------------------- wiring

const runsList = new RunsList({
  onOpen: (run) => openRun(run),
  onClone: (run) => { cloned = null; go(`#/new?from=${encodeURIComponent(run.id)}`); },
  onStopped: (run) => { if (runView.id === run.id) setStatus(run.status); },
  onDeleted: (run) => {
    if (runView.id !== run.id) return;
    runView.close();
    $("run-body").hidden = true;
    $("run-empty").hidden = false;
    setStatus("idle");
    shownRunName = "";
    renderShownRun();
    setConnection("closed");
  },
  onSelection: (selected) => {
    $("compare-selected").disabled = selected.size < 2;
    $("compare-selected").textContent = `Compare selected (${selected.size})`;
    if (current === "compare") renderPicker();
  },
  message: runsMessage,
});

const runForm = new RunForm($("run-form"), {
  onStarted: (run) => { openRun(run); runsList.refresh(); },
  onEdited: (edited) => {
    $("start").textContent = edited ? "Start edited" : "Start defaults";
    $("start").title = edited ? "Start a run with the settings edited in New run"
      : "Start a run with the default settings (edit them in New run)";
  },
});

// The form is built from the server's schema (/openapi.json, ~100 kB): asked for when the form
// is first shown, not on every open of a run link.
let formLoading = null;
function loadForm() {
  formLoading ||= runForm.load();
  return formLoading;
}

// `#/new?from=<id>` (a run's Clone): the form takes that run's settings, once per link.
let cloned = null;
async function cloneInto(id) {
  if (!id || id === cloned) return;
  cloned = id;
  const note = $("form-clone-note");
  try {
    const run = await api(urls.run(id));
    const ignored = runForm.fill(run.config || {}, run.name);
    note.textContent = `Settings of ${run.name} (${id}) filled in` + (ignored.length
      ? `; not run settings, left out: ${ignored.slice(0, 8).join(", ")}${ignored.length > 8 ? "…" : ""}.`
      : ".") + " Change what you want and Launch.";
  } catch (error) {
    note.textContent = `Could not clone run ${id}: ${error.message}`;
  }
  note.hidden = false;
}

$("start").addEventListener("click", startRun);
$("stop").addEventListener("click", stopRun);
$("palette").addEventListener("click", togglePalette);
$("compare-selected").addEventListener("click", compareSelected);
$("compare-go").addEventListener("click", compareSelected);
window.addEventListener("hashchange", route);
// A resized window changes how many pixels a panel has: the visible ones ask for their new grid.
let resizeTimer = 0;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => { runView.panels?.refresh(); compareView.panels?.refresh(); }, 200);
});
// Shortcuts in the run view when no control has the focus: ← / → one rewire, space play/pause.
document.addEventListener("keydown", (event) => {
  if (current !== "run" || event.target !== document.body) return;
  if (event.altKey || event.ctrlKey || event.metaKey) return;
  if (event.key === "ArrowLeft") $("step-back").click();
  else if (event.key === "ArrowRight") $("step-forward").click();
  else if (event.key === " ") $("play").click();
  else return;
  event.preventDefault();
});

// Inside another page's frame (a notebook cell, `sparsescope.show()`): the run view alone, without the
// tabs and Start, so its first heatmaps fit the cell.
if (window.self !== window.top) document.body.dataset.embedded = "true";
applyPalette();
route();
// The runs list stays live by polling; while the server does not answer, the poll backs off
// (to one request every 30 s) and the connection indicator says so, instead of a request, and
// a console error, every few seconds.
let pollDelayMs = RUNS_POLL_MS;
// Whether the server answers: the runs list's refresh (which keeps it current), or inside a
// notebook cell, which shows no list, the health probe (a one-row read, not a page of runs).
async function serverAnswers() {
  if (document.body.dataset.embedded !== "true") {
    await runsList.refresh();
    return runsList.reachable !== false;
  }
  try {
    await request(urls.health());
    return true;
  } catch {
    return false; // fetch rejects only when nothing answered
  }
}
async function pollRuns() {
  if (!document.hidden) {
    serverReachable = await serverAnswers();
    if (!serverReachable) {
      pollDelayMs = Math.min(30_000, pollDelayMs * 2);
      setConnection("unreachable");
    } else {
      if (pollDelayMs !== RUNS_POLL_MS && $("connection").dataset.state === "unreachable") {
        setConnection(runView.stream ? "retrying" : "closed");
      }
      runView.stream?.resume();
      pollDelayMs = RUNS_POLL_MS;
    }
  }
  setTimeout(pollRuns, pollDelayMs);
}
setTimeout(pollRuns, RUNS_POLL_MS);
