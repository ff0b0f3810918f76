// Inline views of one notebook page wait for each other's first panels.
//
// Several `sparsescope.show()` views open together share one renderer thread (same-site frames)
// and one server. Each holds what it draws after its panels (the series, the overview,
// plotly.js, the charts) until every view on the page that is opening has painted its panels,
// or until MAX_WAIT_MS after it opened: else the last views' panels queue behind the first
// ones' charts (seven views all on screen: the last panel came 1 s after the first).
//
// The views tell each other over a BroadcastChannel (same origin, same page): "opening" when a
// view starts opening a run, "painted" once its panels are painted (or it gave up, or the page
// goes). A view that hears a newcomer's "opening" while it is still opening itself answers
// "opening", so views that started earlier are known to later ones too. Outside a frame nothing
// waits: the page is alone.

const CHANNEL = "sparsescope-inline-views";
export const MAX_WAIT_MS = 4000;

class InlineViews {
  constructor() {
    this.token = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
    this.others = new Set(); // views heard opening and not yet painted
    this.opened = false;
    this.done = false;
    this.listeners = [];
    const framed = window.self !== window.top;
    this.channel = framed && "BroadcastChannel" in window ? new BroadcastChannel(CHANNEL) : null;
    if (!this.channel) return;
    this.channel.onmessage = ({ data }) => this.heard(data);
    addEventListener("pagehide", () => this.finished());
  }

  // This view starts opening a run (after it came near the screen).
  opening() {
    if (this.opened || !this.channel) return;
    this.opened = true;
    this.say("opening");
  }

  // This view's panels are painted, or it will not paint any (a missing run, an error).
  finished() {
    if (this.done) return;
    this.done = true;
    this.say("painted");
  }

  // Resolves once `ownPaint` settled and every other opening view has painted, or at the
  // latest `atMostMs` from now.
  allPainted(ownPaint, atMostMs = MAX_WAIT_MS) {
    const own = Promise.resolve(ownPaint).catch(() => undefined).then(() => this.finished());
    if (!this.channel) return own;
    const others = new Promise((resolve) => {
      const check = () => {
        if (this.others.size) return false;
        resolve();
        return true;
      };
      if (!check()) this.listeners.push(check);
    });
    const latest = new Promise((resolve) => setTimeout(resolve, atMostMs));
    return Promise.race([own.then(() => others), latest]);
  }

  say(what) {
    this.channel?.postMessage({ what, token: this.token });
  }

  heard(data) {
    const { what, token } = data || {};
    if (typeof token !== "string" || token === this.token) return;
    if (what === "opening" && !this.others.has(token)) {
      this.others.add(token);
      if (this.opened && !this.done) this.say("opening"); // the newcomer learns of this view
    } else if (what === "painted") {
      this.others.delete(token);
      this.listeners = this.listeners.filter((check) => !check());
    }
  }

  // For the browser tests: what this view knows.
  state() {
    return { opened: this.opened, done: this.done, waitingFor: this.others.size };
  }
}

export const inlineViews = new InlineViews();
