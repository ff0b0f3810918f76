// The websocket to one run: binary topology frames when the server offers them, JSON otherwise;
// resumes from the last seq after a drop, so no frame is lost or applied twice.
import { decodeBinaryFrame } from "./codec.js";
import { socketUrl } from "./api.js";

// Backs off to one attempt every 30 s: a stopped server gets a few attempts, not a flood
// (each failed attempt is one line in the browser's console).
const RETRY_MS = [500, 1000, 2000, 4000, 8000, 15000, 30000];
// Messages received by kind, over every stream of the page (the browser tests read it).
export const streamCounts = { text: 0, binary: 0 };

export class RunStream {
  // onEvent(event) for every decoded message; onState("connecting"|"open"|"retrying"|"closed"|"ended").
  constructor(model, { onEvent, onState }) {
    this.model = model;
    this.onEvent = onEvent;
    this.onState = onState || (() => {});
    this.socket = null;
    this.closed = false;
    this.failures = 0;
    this.timer = 0;
  }

  open() {
    this.closed = false;
    this.connect();
    return this;
  }

  connect() {
    const fromSeq = this.model.lastSeq + 1;
    const socket = new WebSocket(socketUrl(`/ws/runs/${this.model.id}?from_seq=${fromSeq}&format=binary`));
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    this.onState("connecting");
    socket.onopen = () => { this.failures = 0; this.onState("open"); };
    socket.onmessage = (message) => {
      let event;
      try {
        const text = typeof message.data === "string";
        event = text ? JSON.parse(message.data) : decodeBinaryFrame(message.data);
        streamCounts[text ? "text" : "binary"] += 1;
      } catch (error) {
        console.warn("sparsescope: undecodable message", error);
        return;
      }
      if (event.type === "error") {
        this.model.error = event.error;
        this.closed = true;
      }
      this.onEvent(event);
      if (event.type === "end") this.close("ended");
      else if (event.type === "error") this.close("closed");
    };
    socket.onclose = () => {
      if (this.socket !== socket || this.closed) return;
      // Dropped before `end`: resume after the last stored event we applied.
      const delay = RETRY_MS[Math.min(this.failures, RETRY_MS.length - 1)];
      this.failures += 1;
      this.onState("retrying");
      this.timer = setTimeout(() => { if (!this.closed) this.connect(); }, delay);
    };
  }

  // Test hook and network blip: drop the socket as a failing network would; it resumes itself.
  drop() {
    if (this.socket) this.socket.close();
  }

  close(state = "closed") {
    this.closed = true;
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
