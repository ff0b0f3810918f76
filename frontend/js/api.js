// REST calls and websocket URLs, with the optional bearer token asked for once on a 401.
const TOKEN_KEY = "sparsescope.token";
let pendingToken = null;

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

// The token dialog: one prompt at a time, however many calls failed with 401 together.
function askToken() {
  if (pendingToken) return pendingToken;
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  pendingToken = new Promise((resolve) => {
    const done = (value) => {
      dialog.close();
      pendingToken = null;
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      resolve(Boolean(value));
    };
    dialog.querySelector("form").onsubmit = (event) => { event.preventDefault(); done(input.value.trim()); };
    document.getElementById("token-cancel").onclick = () => done("");
    input.value = "";
    dialog.showModal();
    input.focus();
  });
  return pendingToken;
}

export class ApiError extends Error {
  constructor(status, detail, message) {
    super(message);
    this.status = status;
    this.detail = detail;
  }
}

// fetch with the token; on 401 asks for it once and retries. Returns the Response.
export async function request(path, options = {}, retried = false) {
  const headers = { ...(options.headers || {}) };
  const sent = token();
  if (sent) headers.Authorization = `Bearer ${sent}`;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401 && !retried) {
    // Sent before the token was entered (the poll, a panel): retry with it, don't ask again.
    if (token() && token() !== sent) return request(path, options, true);
    if (await askToken()) return request(path, options, true);
  }
  return response;
}

async function errorOf(response, method, path) {
  let detail = null;
  try { detail = (await response.json()).detail; } catch { /* not JSON */ }
  const text = typeof detail === "string" ? detail : `${method} ${path}: HTTP ${response.status}`;
  return new ApiError(response.status, detail, text);
}

// An integer JavaScript numbers cannot hold exactly (a seed from torch.initial_seed(), up to
// 2^64) is kept as its decimal text, so it is shown as stored, never rounded.
function exactIntegers(key, value, context) {
  if (typeof value === "number" && !Number.isSafeInteger(value) && context && /^-?\d+$/.test(context.source)) {
    return context.source;
  }
  return value;
}

export function parseJson(text) {
  return JSON.parse(text, exactIntegers);
}

// JSON in, JSON out; throws ApiError (with FastAPI's `detail`) on any non-2xx answer.
export async function api(path, { method = "GET", body, raw = false } = {}) {
  const options = { method };
  if (body !== undefined) {
    options.body = raw ? body : JSON.stringify(body);
    options.headers = { "Content-Type": raw ? "application/octet-stream" : "application/json" };
  }
  const response = await request(path, options);
  if (!response.ok) throw await errorOf(response, method, path);
  return response.status === 204 ? null : parseJson(await response.text());
}

// GET `path` with the answer's headers: { status, body, headers }. `etag` is sent as
// If-None-Match: when nothing changed the server answers 304, here with `body` null (the
// browser then hands the 304 over instead of its cached copy).
export async function getJson(path, { etag = null } = {}) {
  const response = await request(path, etag ? { headers: { "If-None-Match": etag } } : {});
  if (response.status === 304) return { status: 304, body: null, headers: response.headers };
  if (!response.ok) throw await errorOf(response, "GET", path);
  return { status: response.status, body: parseJson(await response.text()), headers: response.headers };
}

export async function download(path) {
  const response = await request(path);
  if (!response.ok) throw await errorOf(response, "GET", path);
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition);
  return { blob: await response.blob(), filename: match ? decodeURIComponent(match[1]) : "run.sparsescope" };
}

export function socketUrl(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const sep = path.includes("?") ? "&" : "?";
  return `${scheme}//${location.host}${path}${token() ? `${sep}token=${encodeURIComponent(token())}` : ""}`;
}
