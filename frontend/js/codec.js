// The one place the browser decodes what the server sends (specified in docs/protocol.md):
//
// - `GET /api/runs/{id}/view` answers: per-pixel counts of kept / added / removed / possible
//   connections, base64 of little-endian unsigned ints of `dtype` ("u1", "u2", "u4"), gr × gc
//   row-major, and the matrix ranges each pixel covers;
// - websocket text messages (JSON; non-finite numbers arrive as null). In `topology=announce`
//   mode a topology message is a header only (`announce: true`), no mask data.
//
// The golden fixtures in tests/fixtures/protocol/ are decoded by these functions in the browser
// tests, and by the Python side's own decoder, so both ends read the same bytes the same way.

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
const TYPES = {
  u1: { bytes: 1, array: Uint8Array, read: (view, offset) => view.getUint8(offset) },
  u2: { bytes: 2, array: Uint16Array, read: (view, offset) => view.getUint16(offset, true) },
  u4: { bytes: 4, array: Uint32Array, read: (view, offset) => view.getUint32(offset, true) },
};
export const COUNT_PLANES = ["kept", "added", "removed", "possible"];

export function bytesOf(base64) {
  const text = atob(base64 || "");
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes;
}

// `count` unsigned ints of `dtype` from base64; a view without a copy where the host allows.
export function decodeCounts(base64, dtype, count) {
  const type = TYPES[dtype];
  if (!type) throw new Error(`view: unknown dtype ${JSON.stringify(dtype)}`);
  const bytes = bytesOf(base64);
  if (bytes.length !== count * type.bytes) {
    throw new Error(`view: ${bytes.length} bytes for ${count} values of ${dtype}`);
  }
  // atob's buffer starts at offset 0, so it is always aligned.
  if (LITTLE_ENDIAN) return new type.array(bytes.buffer, 0, count);
  const view = new DataView(bytes.buffer);
  const out = new type.array(count);
  for (let i = 0; i < count; i++) out[i] = type.read(view, i * type.bytes);
  return out;
}

// Matrix rows (or cols) [start, end) that pixel `i` of `pixels` covers along an axis of `size`.
export function pixelRange(i, size, pixels) {
  return [Math.floor((i * size) / pixels), Math.floor(((i + 1) * size) / pixels)];
}

// A `/view` answer → { ...header, rows, cols, gr, gc, kept, added, removed, possible }.
export function decodeView(answer) {
  const [rows, cols] = answer.shape;
  const [gr, gc] = answer.grid;
  const count = gr * gc;
  const out = { ...answer, rows, cols, gr, gc };
  for (const plane of COUNT_PLANES) out[plane] = decodeCounts(answer[plane], answer.dtype, count);
  return out;
}

// A websocket text message → an event object, or null for one that cannot be read.
export function parseMessage(text) {
  try {
    const event = JSON.parse(text);
    return event && typeof event === "object" && typeof event.type === "string" ? event : null;
  } catch {
    return null;
  }
}
