// Building the page: elements are made with h(), never from HTML strings, so nothing a run,
// a log line or a model name contains is ever interpreted as markup.

/** h("div.class#id", {attrs, on: {click}}, ...children): an element. */
export function h(tag, attrs, ...children) {
  const [name, ...rest] = tag.split(/(?=[.#])/);
  const el = document.createElement(name || "div");
  for (const part of rest) {
    if (part.startsWith(".")) el.classList.add(part.slice(1));
    else if (part.startsWith("#")) el.id = part.slice(1);
  }
  if (attrs !== null && attrs !== undefined &&
      (typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === "class") el.className = v;
    else if (k in el && !k.startsWith("aria-") && !k.startsWith("data-") && k !== "for" && k !== "list")
      el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

/** Replace the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

export function statusBadge(status) {
  return h(`span.badge.s-${String(status).replace(/[^a-z]/g, "")}`, status);
}

export function when(ts) {
  if (!ts) return "—";
  const d = new Date(ts);
  return Number.isNaN(d.getTime()) ? ts : d.toLocaleString();
}

export function duration(ms) {
  if (ms === null || ms === undefined) return "—";
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/** A run or model id short enough to read and still telling ids of the same second apart
 * (ids are time-ordered UUIDs: their first characters are the time). */
export function shortId(id) {
  const s = String(id);
  return s.length > 16 ? `${s.slice(0, 8)}…${s.slice(-6)}` : s;
}

let toastTimer;
/** A short message at the bottom of the screen (announced to screen readers). */
export function toast(message, error = false) {
  const t = document.getElementById("toast");
  t.textContent = message;
  t.classList.toggle("error", error);
  t.classList.add("shown");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => t.classList.remove("shown"), error ? 8000 : 4000);
}

/** A `<progress>` with its percentage as text. */
export function progressBar(percent, label) {
  const p = Math.max(0, Math.min(100, Number(percent) || 0));
  return h("div.progress",
    h("progress", { max: 100, value: p, "aria-label": label || "progress" }),
    h("span.pct", `${p.toFixed(p % 1 ? 1 : 0)} %`));
}

/** Text as a person should read it: terminal escapes and other control characters removed. */
export function plain(text) {
  return String(text ?? "")
    // eslint-disable-next-line no-control-regex
    .replace(/\x1b\[[0-9;?]*[ -\/]*[@-~]/g, "")
    // eslint-disable-next-line no-control-regex
    .replace(/[\x00-\x08\x0b-\x1f\x7f]/g, "");
}

/**
 * Run `render` (which replaces what is inside `container`) without losing the keyboard focus:
 * an element focused inside it is focused again in the new content when one with the same
 * identity (id, or data-key/data-run/data-step/data-model of its row plus its tag and text)
 * is there.
 */
export function keepFocus(container, render) {
  const ROW = "[data-run],[data-step],[data-model],[data-key],[data-file]";
  const rowOf = (el) => {
    const row = el.closest(ROW);
    return row ? ["run", "step", "model", "key", "file"].map((k) => row.dataset[k] || "").join("|") : "";
  };
  const active = document.activeElement;
  let key = null;
  if (active && active !== document.body && container.contains(active)) {
    key = { id: active.id, row: rowOf(active), tag: active.tagName, text: active.textContent };
  }
  render();
  if (!key) return;
  let found = key.id ? container.querySelector(`#${CSS.escape(key.id)}`) : null;
  if (!found) {
    found = [...container.querySelectorAll(key.tag)]
      .find((el) => rowOf(el) === key.row && el.textContent === key.text) || null;
  }
  if (found) found.focus({ preventScroll: true });
}
