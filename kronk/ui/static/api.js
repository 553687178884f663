// The API client: JSON calls and Server-Sent Events over fetch (EventSource cannot send a key), all with the
// key the user gave (kept in sessionStorage only: gone when the tab closes).
const KEY = "kronk.apiKey";

export function getKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code || null;
  }
}

const listeners = new Set();
/** Called with every ApiError (the app sends a 401 to the key page). */
export function onApiError(fn) {
  listeners.add(fn);
}

function headers(json) {
  const out = {Accept: "application/json"};
  const key = getKey();
  if (key) out.Authorization = `Bearer ${key}`;
  if (json) out["Content-Type"] = "application/json";
  return out;
}

async function failure(r) {
  const text = await r.text().catch(() => "");
  let message = text || r.statusText || `HTTP ${r.status}`;
  let code = null;
  try {
    const body = JSON.parse(text);
    const err = body.error || body;
    message = err.message || message;
    code = err.code || null;
  } catch { /* not JSON: the text is the message */ }
  const e = new ApiError(r.status, message, code);
  for (const fn of listeners) fn(e);
  return e;
}

/** A JSON call; throws ApiError with the server's message. */
export async function api(path, {method = "GET", body, signal} = {}) {
  const r = await fetch(path, {method, headers: headers(body !== undefined), signal, cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body)});
  if (!r.ok) throw await failure(r);
  const text = await r.text();
  return text ? JSON.parse(text) : null;
}

/** Server-Sent Events: yields {event, data} (data parsed as JSON where it is JSON) until the stream ends or
 * ``signal`` aborts it (then it returns quietly). */
export async function* sse(path, {method = "GET", body, signal} = {}) {
  let r;
  try {
    r = await fetch(path, {method, headers: {...headers(body !== undefined), Accept: "text/event-stream"}, signal,
      cache: "no-store", body: body === undefined ? undefined : JSON.stringify(body)});
  } catch (e) {
    if (signal && signal.aborted) return;
    throw e;
  }
  if (!r.ok) throw await failure(r);
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  try {
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (e) {
        if (signal && signal.aborted) return;
        throw e;
      }
      if (chunk.done) break;
      buf += chunk.value.replace(/\r\n/g, "\n");
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) continue;
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (!data.length) continue;
        const text = data.join("\n");
        let parsed = text;
        try { parsed = JSON.parse(text); } catch { /* [DONE] and other plain text */ }
        yield {event, data: parsed};
      }
    }
  } finally {
    reader.cancel().catch(() => {});  // a consumer that stops early closes the connection
  }
}

export function isAbort(e) {
  return e && (e.name === "AbortError" || e.name === "TimeoutError");
}
