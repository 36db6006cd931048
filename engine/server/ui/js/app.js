// The monitor's shell: sign-in, navigation by URL fragment (#/runs, #/runs/<id>, #/start,
// #/models, #/models/<id>), and what the signed-in token may do. Each view renders into <main>
// and returns a function that stops its timers and streams when the person leaves it.

import { ApiError, get, setOnUnauthorized, token } from "./api.js";
import { fill, h } from "./dom.js";
import { runsView } from "./runs.js";
import { runView } from "./run.js";
import { startView } from "./start.js";
import { modelsView, modelView } from "./models.js";

const main = document.getElementById("main");
let session = null;
let leave = null;
// Bumped at each navigation: a view that finishes loading after a newer one started stops
// itself instead of drawing over it.
let navigation = 0;

function leaveView() {
  navigation++;
  if (leave) { try { leave(); } catch { /* ignore */ } leave = null; }
}

/** What the signed-in token may do. */
export const ctx = {
  can: (claim) => !!session && session.claims.includes(claim),
  get session() { return session; },
};

// Each view draws into its own element, which replaces <main>'s content once it is current.
const routes = [
  [/^#\/runs\/([^/]+)$/, (m, el) => runView(el, decodeURIComponent(m[1]), ctx)],
  [/^#\/runs(?:\?(.*))?$/, (m, el) => runsView(el, new URLSearchParams(m[1] || ""), ctx)],
  [/^#\/start$/, (m, el) => startView(el, ctx)],
  [/^#\/models\/([^/]+)$/, (m, el) => modelView(el, decodeURIComponent(m[1]), ctx)],
  [/^#\/models(?:\?(.*))?$/, (m, el) => modelsView(el, new URLSearchParams(m[1] || ""), ctx)],
];

const TITLES = { runs: "Runs", start: "Start training", models: "Models" };

async function route(event) {
  // In-page anchors (the skip link's #main) are not addresses of views.
  if (location.hash && !location.hash.startsWith("#/")) return;
  // A filter that navigates keeps the keyboard focus (its new page has the same control).
  const active = document.activeElement;
  const keep = active && main.contains(active) && active.tagName === "SELECT" ? active.id : "";
  leaveView();
  const mine = navigation;
  if (!session) return signIn();
  const hash = location.hash || "#/runs";
  const section = hash.slice(2).split(/[/?]/)[0];
  document.title = `${TITLES[section] || "Kiln"} — Kiln`;
  for (const a of document.querySelectorAll("[data-nav]")) {
    const current = hash.startsWith(`#/${a.dataset.nav}`);
    if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  const found = routes.find(([re]) => re.test(hash));
  // An unknown address is replaced (Back does not return to it).
  if (!found) { location.replace("#/runs"); return; }
  const view = h("div", h("p.sub.loading", { role: "status" }, "Loading…"));
  fill(main, view);
  let stop = null;
  try {
    stop = (await found[1](hash.match(found[0]), view)) || null;
  } catch (e) {
    if (mine !== navigation) return;
    fill(main, h("section.card", h("h1", "Something went wrong"), h("p.error", e.message)));
    return;
  }
  if (mine !== navigation) {
    if (stop) { try { stop(); } catch { /* ignore */ } }
    return;
  }
  leave = stop;
  // After a navigation, keyboard and screen-reader focus moves to the new content.
  const again = keep && document.getElementById(keep);
  if (again) again.focus({ preventScroll: true });
  else if (event) main.focus({ preventScroll: true });
}

function showShell() {
  document.getElementById("nav").hidden = false;
  document.getElementById("who").hidden = false;
  const claims = session.claims;
  document.getElementById("who-name").textContent =
    session.insecure ? "no sign-in (insecure server)" : session.name;
  document.getElementById("who-name").title = `claims: ${claims.join(", ") || "none"}`;
  for (const el of document.querySelectorAll("[data-claim]")) el.hidden = !claims.includes(el.dataset.claim);
  document.getElementById("sign-out").hidden = session.insecure;
}

function hideShell() {
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
}

/** Ask the server who the stored token is; false when there is none or it is refused. */
async function loadSession() {
  try {
    session = await get("/session");
    return true;
  } catch (e) {
    session = null;
    if (e instanceof ApiError && e.status === 401) return false;
    throw e;
  }
}

function signIn(message) {
  session = null;
  hideShell();
  const input = h("input#token", {
    // A token is not a password to remember: the browser's password manager is not offered it.
    type: "password", name: "token", autocomplete: "off", required: true,
    spellcheck: false, "aria-describedby": "token-help",
  });
  const error = h("p.error#sign-in-error", { role: "alert" }, message || "");
  const form = h("form.card.sign-in", {
    on: {
      submit: async (ev) => {
        ev.preventDefault();
        const t = input.value.trim();
        if (!t) { error.textContent = "Enter a token."; input.focus(); return; }
        token.set(t);
        try {
          if (await loadSession()) { showShell(); route(); return; }
          token.clear();
          error.textContent = "The server refused this token: check it, or create one with `kiln token create`.";
        } catch (e) {
          token.clear();
          error.textContent = `Cannot reach the server: ${e.message}`;
        }
        input.select();
      },
    },
  },
    h("h1", "Sign in"),
    h("label", { for: "token" }, "API token"),
    input,
    h("p.help#token-help", "A token from ", h("code", "kiln token create --name NAME --roles viewer|trainer|publisher|admin"),
      ". It stays in this browser tab only."),
    error,
    h("button.primary", { type: "submit" }, "Sign in"));
  fill(main, form);
  input.focus();
}

setOnUnauthorized(() => {
  if (!session) return;
  token.clear();
  leaveView();
  signIn("Your token is no longer accepted; sign in again.");
});

document.getElementById("sign-out").addEventListener("click", () => {
  token.clear();
  leaveView();
  signIn();
});

window.addEventListener("hashchange", route);

// The skip link moves the focus to the content without leaving the page.
document.querySelector(".skip").addEventListener("click", (ev) => {
  ev.preventDefault();
  main.focus();
});

async function start() {
  try {
    if (await loadSession()) { showShell(); route(); } else signIn();
  } catch (e) {
    // The server is unreachable: the stored token may be fine; offer to try again.
    hideShell();
    fill(main, h("section.card", { role: "alert" },
      h("h1", "Cannot reach the server"),
      h("p.error", e.message),
      h("button.primary#reconnect", { type: "button", on: { click: start } }, "Try again")));
  }
}
start();
