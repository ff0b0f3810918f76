// Decoders of the topology wire formats (dst_core/events.py and the binary frames of COMMON.md).
//
// Both formats are normalised to one shape so the rest of the page never cares which arrived:
//   { ...header, packed: Uint8Array (keyframes: little-endian packed bits),
//     added: Uint32Array, removed: Uint32Array (deltas: sorted flat indices) }

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

export function bytesOf(base64) {
  const text = atob(base64 || "");
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes;
}

// Little-endian uint32 from bytes; a view when the host is little-endian and aligned (no copy).
export function uint32FromBytes(bytes, offset = 0, count = (bytes.length - offset) >> 2) {
  const absolute = bytes.byteOffset + offset;
  if (LITTLE_ENDIAN && absolute % 4 === 0) return new Uint32Array(bytes.buffer, absolute, count);
  const view = new DataView(bytes.buffer, absolute, count * 4);
  const out = new Uint32Array(count);
  for (let i = 0; i < count; i++) out[i] = view.getUint32(i * 4, true);
  return out;
}

// Keyframe: little-endian packed bits → one byte (0/1) per connection.
export function unpackBits(packed, count, out = new Uint8Array(count)) {
  const whole = count >> 3;
  for (let byte = 0; byte < whole; byte++) {
    const value = packed[byte];
    const base = byte << 3;
    if (value === 0) {
      out.fill(0, base, base + 8);
      continue;
    }
    out[base] = value & 1; out[base + 1] = (value >> 1) & 1; out[base + 2] = (value >> 2) & 1;
    out[base + 3] = (value >> 3) & 1; out[base + 4] = (value >> 4) & 1;
    out[base + 5] = (value >> 5) & 1; out[base + 6] = (value >> 6) & 1; out[base + 7] = value >> 7;
  }
  for (let i = whole << 3; i < count; i++) out[i] = (packed[i >> 3] >> (i & 7)) & 1;
  return out;
}

export function decodeBits(base64, count) {
  return unpackBits(bytesOf(base64), count);
}

export function decodeIndices(base64) {
  return uint32FromBytes(bytesOf(base64));
}

const EMPTY = new Uint32Array(0);

// A topology event as JSON text (base64 fields) → the normalised shape.
export function normaliseTopology(event) {
  if (event.packed || event.added instanceof Uint32Array) return event;
  const out = { ...event };
  if (event.keyframe) {
    out.packed = bytesOf(event.bits);
    delete out.bits;
  } else {
    out.added = event.added ? decodeIndices(event.added) : EMPTY;
    out.removed = event.removed ? decodeIndices(event.removed) : EMPTY;
  }
  return out;
}

// One binary websocket message: [uint32 LE header length][JSON header, space padded][payload].
export function decodeBinaryFrame(buffer) {
  if (buffer.byteLength < 4) throw new Error("binary frame shorter than its header length");
  const headerLength = new DataView(buffer).getUint32(0, true);
  if (4 + headerLength > buffer.byteLength) throw new Error("binary frame header overruns");
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, headerLength)));
  const payload = new Uint8Array(buffer, 4 + headerLength);
  const event = { type: "topology", ...header };
  if (header.keyframe) {
    const [rows, cols] = header.shape;
    const needed = Math.ceil((rows * cols) / 8);
    if (payload.length < needed) throw new Error("binary keyframe payload too short");
    event.packed = payload.subarray(0, needed);
  } else {
    const nAdded = header.n_added || 0;
    const nRemoved = header.n_removed || 0;
    if (payload.length < 4 * (nAdded + nRemoved)) throw new Error("binary delta payload too short");
    event.added = uint32FromBytes(payload, 0, nAdded);
    event.removed = uint32FromBytes(payload, 4 * nAdded, nRemoved);
  }
  return event;
}

// Test helper and the inverse of decodeBinaryFrame (used by the browser tests' round trip).
export function encodeBinaryFrame(header, payloadBytes) {
  let text = JSON.stringify(header);
  let encoded = new TextEncoder().encode(text);
  while ((4 + encoded.length) % 4 !== 0) { text += " "; encoded = new TextEncoder().encode(text); }
  const buffer = new ArrayBuffer(4 + encoded.length + payloadBytes.length);
  new DataView(buffer).setUint32(0, encoded.length, true);
  new Uint8Array(buffer, 4, encoded.length).set(encoded);
  new Uint8Array(buffer, 4 + encoded.length).set(payloadBytes);
  return buffer;
}
