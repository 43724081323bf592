// The gateway's HTTP API, as the console calls it: same origin, the API key from this tab's
// session storage, OpenAI-shaped errors turned into ApiError. Nothing here talks to any other host.

const KEY_ITEM = "forgeline.console.apiKey";

/** The API key of this browser tab (sessionStorage: gone when the tab closes). */
export const keyStore = {
  get() {
    try {
      return sessionStorage.getItem(KEY_ITEM) || "";
    } catch {
      return "";
    }
  },
  set(key) {
    sessionStorage.setItem(KEY_ITEM, key);
  },
  clear() {
    sessionStorage.removeItem(KEY_ITEM);
  },
};

/** A failed API call: the HTTP status and the fields of OpenAI's error object. */
export class ApiError extends Error {
  constructor(status, message, { code = null, param = null, type = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.param = param;
    this.type = type;
  }

  /** The error a non-2xx response carries (`{"error": {...}}`), or one made from its status. */
  static async from(response) {
    let error = null;
    try {
      const body = await response.json();
      error = body && typeof body.error === "object" ? body.error : null;
      if (!error && body && typeof body.detail === "string") error = { message: body.detail };
    } catch {
      // not JSON: described by the status below
    }
    const message =
      (error && error.message) || `${response.status} ${response.statusText || "error"}`.trim();
    const failure = new ApiError(response.status, message, error || {});
    if (response.status === 401) announceUnauthorized(failure);
    return failure;
  }
}

function announceUnauthorized(error) {
  window.dispatchEvent(new CustomEvent("forgeline:unauthorized", { detail: error }));
}

function headers(extra) {
  const result = new Headers(extra);
  const key = keyStore.get();
  if (key) result.set("Authorization", `Bearer ${key}`);
  return result;
}

async function send(path, init) {
  try {
    return await fetch(path, { credentials: "omit", cache: "no-store", ...init });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, `The gateway could not be reached (${error.message}).`);
  }
}

/**
 * Call the API. `body` is sent as JSON, `form` (FormData) as multipart.
 * @returns the parsed JSON answer (null for 204).
 * @throws ApiError for any non-2xx answer or a network failure.
 */
export async function request(method, path, { body, form, signal } = {}) {
  const extra = {};
  let payload;
  if (form !== undefined) {
    payload = form;
  } else if (body !== undefined) {
    extra["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const response = await send(path, { method, headers: headers(extra), body: payload, signal });
  if (!response.ok) throw await ApiError.from(response);
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

export const api = {
  get: (path, options) => request("GET", path, options),
  post: (path, body, options = {}) => request("POST", path, { ...options, body }),
  delete: (path, options) => request("DELETE", path, options),
  upload: (path, form, options = {}) => request("POST", path, { ...options, form }),
};

/** A query string from the defined values of `params` ("" when none). */
export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(name, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/** Every event of a fine-tuning job, oldest first (the API pages newest first, 100 at a time). */
export async function allJobEvents(jobId, { signal, known = new Set() } = {}) {
  const fresh = [];
  let after;
  for (;;) {
    const page = await api.get(
      `/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/events${query({ limit: 100, after })}`,
      { signal },
    );
    let reachedKnown = false;
    for (const event of page.data) {
      if (known.has(event.id)) {
        reachedKnown = true;
        break;
      }
      fresh.push(event);
    }
    if (reachedKnown || !page.has_more || page.data.length === 0) break;
    after = page.data[page.data.length - 1].id;
  }
  return fresh.reverse();
}

/**
 * Stream a chat completion: yields each chunk of the Server-Sent Events stream as parsed JSON,
 * ending at `data: [DONE]`. An error event, or an error answer before the stream, throws ApiError.
 */
export async function* streamChat(body, { signal } = {}) {
  const response = await send("/v1/chat/completions", {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    signal,
  });
  if (!response.ok) throw await ApiError.from(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let boundary;
      while ((boundary = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const raw = buffer.slice(0, boundary);
        buffer = buffer.slice(boundary).replace(/^\r?\n\r?\n/, "");
        const data = eventData(raw);
        if (data === null) continue;
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) {
          throw new ApiError(502, chunk.error.message || "The stream failed.", chunk.error);
        }
        yield chunk;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/** The data of one SSE event (its `data:` lines joined), or null for a comment or empty event. */
function eventData(raw) {
  const lines = [];
  for (const line of raw.split(/\r?\n/)) {
    if (line.startsWith("data:")) lines.push(line.slice(5).replace(/^ /, ""));
  }
  return lines.length ? lines.join("\n") : null;
}
