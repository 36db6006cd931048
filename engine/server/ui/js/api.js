// The API client: every request carries the signed-in token (kept in sessionStorage: this tab
// only, never in a URL). Errors are the API's problem documents, thrown as ApiError.

const PREFIX = "/api/v1";
const KEY = "kiln.token";

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
    this.code = this.problem.code;
  }
}

export const token = {
  get: () => sessionStorage.getItem(KEY) || "",
  set: (t) => sessionStorage.setItem(KEY, t),
  clear: () => sessionStorage.removeItem(KEY),
};

function headers(extra) {
  const h = { Accept: "application/json", ...extra };
  const t = token.get();
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

/** Called when the API says the token is not (or no longer) valid. */
export let onUnauthorized = () => {};
export function setOnUnauthorized(fn) { onUnauthorized = fn; }

export async function api(method, path, body, { signal } = {}) {
  const init = { method, headers: headers(), signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(PREFIX + path, init);
  const text = await res.text();
  let data = null;
  if (text) {
    // Not JSON (a proxy's HTML error page, say): its status says more than its markup.
    try { data = JSON.parse(text); } catch { data = { detail: res.ok ? text : `HTTP ${res.status} ${res.statusText}`.trim() }; }
  } else if (!res.ok) {
    data = { detail: `HTTP ${res.status} ${res.statusText}`.trim() };
  }
  if (!res.ok) {
    if (res.status === 401) onUnauthorized();
    throw new ApiError(res.status, data);
  }
  return data;
}

export const get = (path, opts) => api("GET", path, undefined, opts);
export const post = (path, body, opts) => api("POST", path, body ?? {}, opts);
export const del = (path, opts) => api("DELETE", path, undefined, opts);

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

/**
 * Follow a step's log over Server-Sent Events, read with fetch so the token travels in a header
 * (EventSource cannot send one). On a dropped connection it reconnects with Last-Event-ID, so no
 * line is lost or repeated. Calls onLines([text...]) with the lines of each network read (one
 * page update per batch, not per line) and onEnd(status) at the end; returns a function that
 * stops following.
 */
export function followLog(runId, step, { onLines, onEnd, onState }) {
  const ctl = new AbortController();
  let lastId = null;
  let stopped = false;
  let delay = 500;
  (async () => {
    while (!stopped) {
      try {
        onState?.("connecting");
        const h = headers({ Accept: "text/event-stream" });
        if (lastId !== null) h["Last-Event-ID"] = lastId;
        const res = await fetch(`${PREFIX}/runs/${encodeURIComponent(runId)}/logs${query({ step })}`,
          { headers: h, signal: ctl.signal });
        if (!res.ok) {
          if (res.status === 401) onUnauthorized();
          const p = await res.json().catch(() => ({}));
          throw new ApiError(res.status, p);
        }
        onState?.("live");
        delay = 500;
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        let ended = false;
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          const batch = [];
          let cut;
          while ((cut = buf.search(/\r?\n\r?\n/)) >= 0) {
            const block = buf.slice(0, cut);
            buf = buf.slice(cut).replace(/^\r?\n\r?\n/, "");
            const ev = { event: "message", data: [], id: null };
            for (const line of block.split(/\r?\n/)) {
              if (line.startsWith(":")) continue;
              const i = line.indexOf(":");
              const field = i < 0 ? line : line.slice(0, i);
              let val = i < 0 ? "" : line.slice(i + 1);
              if (val.startsWith(" ")) val = val.slice(1);
              if (field === "data") ev.data.push(val);
              else if (field === "event") ev.event = val;
              else if (field === "id") ev.id = val;
            }
            if (ev.id !== null) lastId = ev.id;
            if (ev.event === "end") {
              ended = true;
              if (batch.length) onLines(batch.splice(0));
              let status = "";
              try { status = JSON.parse(ev.data.join("\n")).status; } catch { /* ignore */ }
              onEnd?.(status);
            } else if (ev.data.length) {
              batch.push(ev.data.join("\n"));
            }
          }
          if (batch.length) onLines(batch);
        }
        if (ended) { stopped = true; onState?.("ended"); return; }
      } catch (e) {
        if (stopped || e.name === "AbortError") return;
        if (e instanceof ApiError && e.status >= 400 && e.status < 500) {
          onState?.("error", e.message);
          return;
        }
      }
      onState?.("reconnecting");
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 5000);
    }
  })();
  return () => { stopped = true; ctl.abort(); };
}
