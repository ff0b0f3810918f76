// The one player of the dashboard: which rewire is on screen, following live, playing, and the
// controls that move it (scrubber, step buttons, play, speed, follow live). The run view and the
// compare view each own one, bound to their own controls.
//
// Other modules follow the position with `player.subscribe(listener)`: the listener is called
// with { position, step, live, playing, steps } after every change (and once at once), and the
// call returns a function that unsubscribes. This is the hook for sections that show more about
// the rewire on screen (see docs/dashboard.md).

export class Player {
  // controls: { scrubber, back, forward, play, live, position, speed } (elements; any may be null).
  constructor(controls, { label = (state) => (state.step === null ? "no rewires yet" : `step ${state.step}`) } = {}) {
    this.controls = controls;
    this.label = label;
    this.steps = [];
    this.position = -1;
    this.live = false;
    this.followable = false; // the run is still recording: "follow live" means something
    this.playing = false;
    this.timer = 0;
    this.listeners = new Set();
    const { scrubber, back, forward, play, live, speed } = controls;
    if (scrubber) scrubber.addEventListener("input", () => { this.pause(); this.seek(Number(scrubber.value)); });
    if (back) back.addEventListener("click", () => { this.pause(); this.seek(this.position - 1); });
    if (forward) forward.addEventListener("click", () => { this.pause(); this.seek(this.position + 1); });
    if (play) play.addEventListener("click", () => (this.playing ? this.pause() : this.play()));
    if (live) live.addEventListener("click", () => { this.pause(); this.follow(!this.live); });
    if (speed) speed.addEventListener("change", () => { if (this.playing) { this.pause(); this.play(); } });
  }

  get step() {
    return this.position >= 0 && this.position < this.steps.length ? this.steps[this.position] : null;
  }

  state() {
    return { position: this.position, step: this.step, live: this.live, playing: this.playing,
             steps: this.steps, followable: this.followable };
  }

  subscribe(listener) {
    this.listeners.add(listener);
    listener(this.state());
    return () => this.listeners.delete(listener);
  }

  emit() {
    this.render();
    const state = this.state();
    for (const listener of this.listeners) listener(state);
  }

  // A new list of rewire steps (ascending). While following live the position moves to the
  // newest; otherwise it stays on the step it showed.
  setSteps(steps, { position = null } = {}) {
    const shown = this.step;
    this.steps = steps;
    if (this.live) this.position = steps.length - 1;
    else if (position !== null) this.position = Math.max(-1, Math.min(steps.length - 1, position));
    else if (shown !== null) this.position = Math.max(0, lastAtOrBefore(steps, shown));
    else this.position = steps.length - 1;
    this.emit();
  }

  // Whether the run still records: an ended run cannot be followed (the button is released).
  setFollowable(followable) {
    this.followable = followable;
    if (!followable && this.live) this.live = false;
    this.emit();
  }

  seek(position) {
    if (this.steps.length === 0) return;
    const next = Math.max(0, Math.min(this.steps.length - 1, position));
    const changed = next !== this.position || this.live;
    this.position = next;
    this.live = false;
    if (changed) this.emit(); else this.render();
  }

  seekStep(step) {
    this.seek(Math.max(0, lastAtOrBefore(this.steps, step)));
  }

  follow(live) {
    this.live = Boolean(live) && this.followable;
    if (this.live) this.position = this.steps.length - 1;
    this.emit();
  }

  play() {
    if (this.steps.length === 0) return;
    if (this.position >= this.steps.length - 1) this.seek(0);
    this.playing = true;
    this.live = false;
    const rate = Number(this.controls.speed ? this.controls.speed.value : 5) || 5;
    this.timer = setInterval(() => {
      if (this.position >= this.steps.length - 1) {
        // Caught up: a run that still records is followed from here, an ended one stops.
        this.pause();
        if (this.followable) this.follow(true);
        return;
      }
      this.position += 1;
      this.emit();
    }, 1000 / rate);
    this.emit();
  }

  pause() {
    if (!this.playing) return;
    this.playing = false;
    clearInterval(this.timer);
    this.timer = 0;
    this.emit();
  }

  // The next rewires playing will show (for prefetch): up to `count` positions ahead.
  upcoming(count) {
    if (!this.playing) return [];
    return this.steps.slice(this.position + 1, this.position + 1 + count);
  }

  render() {
    const { scrubber, play, live, position, back, forward } = this.controls;
    const last = this.steps.length - 1;
    const state = this.state();
    if (scrubber) {
      scrubber.max = String(Math.max(0, last));
      scrubber.value = String(Math.max(0, this.position));
      scrubber.disabled = last < 0;
      scrubber.setAttribute("aria-valuetext", this.step === null ? "no rewires yet" : `step ${this.step}`);
    }
    if (back) back.disabled = this.position <= 0;
    if (forward) forward.disabled = this.position >= last;
    if (play) {
      play.textContent = this.playing ? "Pause" : "Play";
      play.setAttribute("aria-pressed", String(this.playing));
      play.disabled = last < 0;
    }
    if (live) {
      live.setAttribute("aria-pressed", String(this.live));
      live.disabled = !this.followable;
      live.title = this.followable ? "Follow the newest rewire" : "The run has ended: nothing more to follow";
    }
    if (position) {
      position.textContent = this.label(state);
      position.dataset.step = String(this.step);
    }
  }

  close() {
    this.pause();
    this.listeners.clear();
    this.steps = [];
    this.position = -1;
    this.live = false;
    this.render();
  }
}

// Index of the last entry of ascending `values` at or before `value` (-1 when none).
export function lastAtOrBefore(values, value) {
  let lo = 0;
  let hi = values.length - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (values[mid] <= value) { found = mid; lo = mid + 1; } else hi = mid - 1;
  }
  return found;
}
