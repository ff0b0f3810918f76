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

// One Plotly call per element at a time. Plotly's draw of an image trace is asynchronous (it
// waits for the PNG to decode): a purge in that gap deletes the layout the draw's last step reads
// ("Cannot read properties of undefined (reading '_rangeSliderData')": a panel scrolled away or
// a replay moved on while it drew). A call made while the element is busy waits for the one in
// flight; on an idle element it runs at once, as Plotly's own call would.
function inTurn(div, call) {
  const previous = div.sparsescopeBusy;
  const result = previous ? previous.then(call) : new Promise((resolve) => resolve(call()));
  const settled = result.then(() => undefined, () => undefined);
  div.sparsescopeBusy = settled;
  settled.then(() => { if (div.sparsescopeBusy === settled) div.sparsescopeBusy = null; });
  return result;
}

// Plotly.react once the library is there and the element is free. Calls made meanwhile keep only
// the newest arguments per element: the first to run draws those, the rest do nothing.
export function react(div, traces, layout, config) {
  div.sparsescopePending = [traces, layout, config];
  const draw = (library) => inTurn(div, () => {
    const pending = div.sparsescopePending;
    div.sparsescopePending = null;
    return pending ? library.react(div, ...pending) : div;
  });
  const library = plotlyNow();
  if (library) return draw(library);
  return plotly().then(draw).catch((error) => { div.dataset.error = error.message; return div; });
}

// Plotly.relayout, in turn with the element's other calls.
export function relayout(div, update) {
  return inTurn(div, () => plotlyNow().relayout(div, update));
}

// Plotly.purge (after a draw in flight), and a draw still waiting for the library forgotten.
export function purge(div) {
  div.sparsescopePending = null;
  div.sparsescopeWaiting = null; // charts.js drawChart's
  const library = plotlyNow();
  if (library) inTurn(div, () => library.purge(div));
}
