// plotly.js, loaded when a chart first needs it and never before the run view's first panel.
//
// The bundle (plotly.js-cartesian-dist-min: scatter, bar, heatmap, image; vendor/) is 1.5 MB
// of script that takes the main thread for a few hundred ms to parse and run: the runs list and
// the form never load it, and a run opened from a link paints its panels first (heatmap.js
// draws them without it) and only then lets charts ask for it.

const BUNDLE = new URL("../vendor/plotly-cartesian.min.js", import.meta.url).href;

let loading = null;
let gate = Promise.resolve();

// The library if it is already running, else null (a panel then paints without it).
export function plotlyNow() {
  return window.Plotly || null;
}

// The library, loaded on first call (after `gate`): a promise of window.Plotly.
export function plotly() {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  if (!loading) {
    loading = gate.then(() => new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = BUNDLE;
      script.async = true;
      script.onload = () => resolve(window.Plotly);
      script.onerror = () => { loading = null; reject(new Error("the charting library did not load")); };
      document.head.append(script);
    }));
  }
  return loading;
}

// Holds the load until `first` settles (the first panel painted) or `atMostMs` passed, so the
// bundle's parse never delays what the user came to see. No effect once loading has begun.
export function holdUntil(first, atMostMs) {
  if (loading || window.Plotly) return;
  gate = firstOrLater(first, atMostMs);
}

// As holdUntil, and also until one of `elements` comes
// within 300 px of the screen: inside a notebook cell, where several views share one page's
// main thread, the bundle is parsed only for a view whose charts are being looked at.
export function holdUntilNear(elements, first, atMostMs) {
  if (loading || window.Plotly) return;
  observer?.disconnect();
  const near = new Promise((resolve) => {
    observer = new IntersectionObserver((entries) => {
      if (!entries.some((entry) => entry.isIntersecting)) return;
      observer.disconnect();
      observer = null;
      resolve();
    }, { rootMargin: "300px" });
  });
  for (const element of elements) observer.observe(element);
  gate = Promise.all([near, firstOrLater(first, atMostMs)]);
}

let observer = null;

function firstOrLater(first, atMostMs) {
  const settled = Promise.resolve(first).catch(() => undefined);
  return Promise.race([settled, new Promise((resolve) => setTimeout(resolve, atMostMs))]);
}

// Whether the load has begun or finished (the browser test checks the panel came first).
export function plotlyRequested() {
  return Boolean(loading || window.Plotly);
}

// Plotly.react once the library is there. Calls made while it loads keep only the newest
// arguments per element: the first to run after the load draws those, the rest do nothing.
export function react(div, traces, layout, config) {
  const library = plotlyNow();
  if (library) return library.react(div, traces, layout, config);
  div.sparsescopePending = [traces, layout, config];
  return plotly().then((loaded) => {
    const pending = div.sparsescopePending;
    div.sparsescopePending = null;
    return pending ? loaded.react(div, ...pending) : div;
  }).catch((error) => { div.dataset.error = error.message; return div; });
}

// Plotly.purge, and a draw still waiting for the library forgotten.
export function purge(div) {
  div.sparsescopePending = null;
  div.sparsescopeWaiting = null; // charts.js drawChart's

  plotlyNow()?.purge(div);
}
