// Decoders of the stored topology wire format (see dst_core/events.py).

function bytesOf(base64) {
  const text = atob(base64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes;
}

// Keyframe: the whole mask as little-endian packed bits → one byte (0/1) per connection.
export function decodeBits(base64, count) {
  const packed = bytesOf(base64);
  const out = new Uint8Array(count);
  for (let i = 0; i < count; i++) out[i] = (packed[i >> 3] >> (i & 7)) & 1;
  return out;
}

// Delta: sorted flat indices as little-endian uint32.
export function decodeIndices(base64) {
  const bytes = bytesOf(base64);
  return new Uint32Array(bytes.buffer, 0, bytes.length >> 2);
}
