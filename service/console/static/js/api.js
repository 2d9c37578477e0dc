// The console's only way to the server: Hone's public API, with the key the user signed in with.
// The key lives in sessionStorage (this tab, until it closes or the user signs out) and goes out as a Bearer token.

const KEY = "hone.console.key";
const ROLE = "hone.console.role";

export const session = {
  get key() {
    return sessionStorage.getItem(KEY);
  },
  get role() {
    return sessionStorage.getItem(ROLE);
  },
  save(key, role) {
    sessionStorage.setItem(KEY, key);
    sessionStorage.setItem(ROLE, role);
  },
  clear() {
    sessionStorage.removeItem(KEY);
    sessionStorage.removeItem(ROLE);
  },
};

export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = error?.code || null;
    this.param = error?.param || null;
  }
}

function headers(key, json) {
  const h = { Authorization: `Bearer ${key}` };
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: a proxy's page, say
  }
  return new ApiError(response.status, body?.error);
}

/** One API call: JSON in, JSON out; an error envelope becomes an ApiError with its message. */
export async function api(path, { method = "GET", body, query, signal, key = session.key } = {}) {
  let url = path;
  if (query) {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(query)) {
      if (value !== undefined && value !== null && value !== "") params.set(name, String(value));
    }
    const text = params.toString();
    if (text) url += `?${text}`;
  }
  const isForm = body instanceof FormData;
  const response = await fetch(url, {
    method,
    headers: headers(key, body !== undefined && !isForm),
    body: body === undefined ? undefined : isForm ? body : JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

/** A route that answers text (a job's trainer log), with the same key and errors as api(). */
export async function apiText(path, { query, signal } = {}) {
  const url = query ? `${path}?${new URLSearchParams(query)}` : path;
  const response = await fetch(url, { headers: headers(session.key, false), signal });
  if (!response.ok) throw await failure(response);
  return response.text();
}

/** Every page of a list route that pages with `after` (newest first), up to `max` items. */
export async function listAll(path, { query = {}, max = 10000, signal } = {}) {
  const items = [];
  let after;
  for (;;) {
    const page = await api(path, { query: { ...query, after }, signal });
    items.push(...page.data);
    if (!page.has_more || !page.data.length || items.length >= max) return items;
    after = page.data[page.data.length - 1].id;
  }
}

/**
 * Whose key this is: "project" (files, jobs, models...) or "admin" (projects and keys); else an ApiError (401).
 * The project routes answer the admin key 403 (it manages projects only), and an unknown key 401.
 */
export async function whoIs(key) {
  try {
    await api("/v1/models", { key });
    return "project";
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 403) throw error;
    await api("/v1/organization/projects", { key, query: { limit: 1 } });
    return "admin";
  }
}

/**
 * A streamed chat completion: POST /v1/chat/completions with stream: true, read as server-sent events.
 * `onDelta(text)` gets each piece of the answer; resolves with {text, finishReason, usage}.
 */
export async function streamChat(body, { onDelta, signal } = {}) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: { ...headers(session.key, true), Accept: "text/event-stream" },
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    signal,
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let text = "";
  let finishReason = null;
  let usage = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      const data = event
        .split(/\r?\n/)
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (!data || data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(response.status, chunk.error);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const piece = choice.delta?.content;
        if (piece) {
          text += piece;
          onDelta?.(piece, text);
        }
        if (choice.finish_reason) finishReason = choice.finish_reason;
      }
    }
  }
  return { text, finishReason, usage };
}
