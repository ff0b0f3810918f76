// The websocket to one run, in `topology=announce` mode: topology events arrive as headers only
// (the page fetches the panels it shows), everything else as stored. It subscribes from the
// seq after the newest one the page already knows (`last_seq + 1` of `/rewires`), so no history
// is ever queued, and resumes after the last seq it saw when the connection drops.
import { socketUrl } from "./api.js";
import { parseMessage } from "./codec.js";
import * as urls from "./urls.js";

// Backs off to one attempt every 30 s: a stopped server gets a few attempts, not a flood
// (each failed attempt is one line in the browser's console). While the page knows the server
// is unreachable (`canConnect()` is false: the runs poll gets no answer) it makes no attempt at
// all; `resume()` reconnects at once when the server answers again.
const RETRY_MS = [500, 1000, 2000, 4000, 8000, 15000, 30000];

export class RunStream {
  // onEvent(event) for every message; onState("connecting"|"open"|"retrying"|"closed"|"ended").
  constructor(runId, fromSeq, { onEvent, onState, canConnect = () => true }) {
    this.runId = runId;
    this.lastSeq = fromSeq - 1;
    this.onEvent = onEvent;
    this.onState = onState || (() => {});
    this.canConnect = canConnect;
    this.parked = false; // a retry is due but waits for the server to answer again (resume)
    this.socket = null;
    this.closed = false;
    this.failures = 0;
    this.timer = 0;
    this.received = 0;
  }

  open() {
    this.closed = false;
    this.connect();
    return this;
  }

  connect() {
    const socket = new WebSocket(socketUrl(urls.stream(this.runId, { fromSeq: this.lastSeq + 1, mode: "announce" })));
    this.socket = socket;
    this.onState("connecting");
    socket.onopen = () => { this.failures = 0; this.onState("open"); };
    socket.onmessage = (message) => {
      const event = typeof message.data === "string" ? parseMessage(message.data) : null;
      if (!event) {
        console.warn("sparsescope: unreadable stream message");
        return;
      }
      if (event.seq !== undefined && event.seq !== null) {
        if (event.seq <= this.lastSeq) return; // a resumed stream may repeat: never apply twice
        this.lastSeq = event.seq;
      }
      this.received += 1;
      if (event.type === "error") this.closed = true;
      this.onEvent(event);
      if (event.type === "end") this.close("ended");
      else if (event.type === "error") this.close("closed");
    };
    socket.onclose = () => {
      if (this.socket !== socket || this.closed) return;
      const delay = RETRY_MS[Math.min(this.failures, RETRY_MS.length - 1)];
      this.failures += 1;
      this.onState("retrying");
      this.timer = setTimeout(() => {
        if (this.closed) return;
        if (this.canConnect()) this.connect(); else this.parked = true;
      }, delay);
    };
  }

  // The server answers again: a parked retry connects now.
  resume() {
    if (!this.parked || this.closed) return;
    this.parked = false;
    this.connect();
  }

  // Test hook and network blip: drop the socket as a failing network would; it resumes itself.
  drop() {
    if (this.socket) this.socket.close();
  }

  close(state = "closed") {
    this.closed = true;
    this.parked = false;
    clearTimeout(this.timer);
    if (this.socket) {
      const socket = this.socket;
      this.socket = null;
      socket.onclose = null;
      if (socket.readyState <= 1) socket.close();
    }
    this.onState(state);
  }
}
