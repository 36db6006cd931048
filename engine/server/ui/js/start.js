// Start a training: framework and task, project and release (extracted on demand, with the
// dataset's folder and class names), training name, a user/developer mode switch over the options
// the framework's resolver describes (from the server), a preflight that shows the resolved config
// and the exact command line and names every invalid or missing input next to its field; Start
// is allowed only after a clean preflight of exactly what is on the form.

import { ApiError, get, post, query } from "./api.js";
import { fill, h, plain, toast } from "./dom.js";

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

let seq = 0;
const uid = () => `f${++seq}`;

/** A labelled form field with a slot for its error. */
function field(label, control, help) {
  const id = control.id || (control.id = uid());
  const error = h("p.field-error", { id: `${id}-error`, role: "alert" });
  control.setAttribute("aria-describedby", `${id}-error${help ? ` ${id}-help` : ""}`);
  const wrap = h("div.field", h("label", { for: id }, label), control,
    help ? h("p.help", { id: `${id}-help` }, help) : null, error);
  return {
    wrap, control,
    setError(msg) {
      error.textContent = msg || "";
      wrap.classList.toggle("invalid", !!msg);
      if (msg) control.setAttribute("aria-invalid", "true"); else control.removeAttribute("aria-invalid");
    },
  };
}

function parseValue(opt, raw) {
  const text = raw.trim();
  switch (opt.type) {
    case "int":
      if (!/^-?\d+$/.test(text)) throw new Error("a whole number");
      return Number(text);
    case "float": {
      const n = Number(text);
      if (text === "" || !Number.isFinite(n)) throw new Error("a number");
      return n;
    }
    case "bool":
      return text === "true";
    case "str":
      return text;
    case "list":
      try {
        const v = JSON.parse(text);
        if (!Array.isArray(v)) throw new Error();
        return v;
      } catch { throw new Error('a JSON list, e.g. [640, 640]'); }
    default:
      try { return JSON.parse(text); } catch { return text; }
  }
}

function shown(value) {
  if (value === null || value === undefined) return "";
  return typeof value === "string" ? value : JSON.stringify(value);
}

export async function startView(main, ctx) {
  if (!ctx.can("CreateTrainingRun")) {
    fill(main, h("section.card", h("h1", "Start training"),
      h("p", "Your token may not start trainings (it lacks the claim CreateTrainingRun).")));
    return null;
  }
  const [fw, pj] = await Promise.all([get("/training/frameworks"), get("/projects")]);
  const frameworks = fw.frameworks;
  const projects = pj.projects;

  const f = {
    framework: field("Framework", h("select#framework", frameworks.map((x) =>
      h("option", { value: x.name, disabled: !x.startable }, x.startable ? `${x.name} (plugin ${x.plugin_version})` : `${x.name} — unavailable`)))),
    task: field("Task", h("select#task")),
    project: field("Project", h("select#project",
      h("option", { value: "" }, projects.length ? "choose a project" : "no project has a folder under projects/"),
      projects.map((p) => h("option", { value: p.name }, p.name)))),
    release: field("Release", h("select#release"), "Release ZIPs under projects/<project>/releases/."),
    name: field("Training name", h("input#training-name", { type: "text", autocomplete: "off", spellcheck: false, maxLength: 128 }),
      "Letters, digits, '.', '_' and '-'. Outputs go to projects/<project>/model/training/<name>/."),
  };
  const frameworkProblem = h("p.help#framework-problem");
  const dataset = h("div.dataset#dataset", { "aria-live": "polite" });
  const extractButton = h("button#extract", { type: "button" }, "Extract / show dataset");
  const modeUser = h("input#mode-user", { type: "radio", name: "mode", value: "user", checked: true });
  const modeDev = h("input#mode-developer", { type: "radio", name: "mode", value: "developer" });
  const filter = h("input#option-filter", { type: "search", placeholder: "filter options", "aria-label": "Filter options", hidden: true });
  const optionsBox = h("div.options#options");
  const preflightButton = h("button#preflight", { type: "button" }, "Preflight");
  const startButton = h("button.primary#start", { type: "submit", disabled: true }, "Start");
  const formError = h("p.error#form-error", { role: "alert" });
  const previewBox = h("div.preview#preview");

  fill(main,
    h("div.head", h("h1", "Start a training")),
    h("form.card.start#start-form", { noValidate: true, on: { submit: (e) => { e.preventDefault(); start(); } } },
      h("div.row", f.framework.wrap, f.task.wrap), frameworkProblem,
      h("div.row", f.project.wrap, f.release.wrap),
      h("div", extractButton, dataset),
      f.name.wrap,
      h("fieldset.mode", h("legend", "Options"),
        h("div.switch", { role: "radiogroup", "aria-label": "Mode" },
          h("label", modeUser, " User mode: the safe options"),
          h("label", modeDev, " Developer mode: every option the resolver knows")),
        filter, optionsBox),
      h("div.actions", preflightButton, startButton),
      formError),
    previewBox);

  let options = [];           // from the resolver: {key, type, default, user, description}
  let optionFields = new Map(); // key -> field
  let preflightOk = null;     // the request a clean preflight checked
  const unusable = new Map(); // framework -> why its options could not be loaded

  const mode = () => (modeDev.checked ? "developer" : "user");
  const current = () => frameworks.find((x) => x.name === f.framework.control.value);

  let preflights = 0;
  function invalidate() {
    preflightOk = null;
    preflights++;
    startButton.disabled = true;
  }

  function fillTasks() {
    const fr = current();
    fill(f.task.control, (fr?.tasks || []).map((t) => h("option", { value: t }, t)));
    frameworkProblem.textContent = fr?.problem || "";
  }

  function fillReleases() {
    const p = projects.find((x) => x.name === f.project.control.value);
    fill(f.release.control,
      h("option", { value: "" }, p ? (p.releases.length ? "choose a release" : "no release ZIP in this project") : "choose a project first"),
      (p?.releases || []).map((r) => h("option", { value: r.file }, r.file)));
    fill(dataset);
  }

  let optionsAsked = 0;
  async function loadOptions() {
    const asked = ++optionsAsked;
    const fr = current();
    fill(optionsBox, h("p.sub", "Loading the options…"));
    options = [];
    optionFields = new Map();
    if (!fr || !fr.startable || !f.task.control.value) { fill(optionsBox, h("p.sub", "Choose a framework and task.")); return; }
    try {
      const r = await post("/training/config/resolve", { framework: fr.name, task: f.task.control.value, mode: "developer", overrides: {} });
      if (asked !== optionsAsked) return; // another framework or task was chosen meanwhile
      options = r.options || [];
    } catch (e) {
      if (asked !== optionsAsked) return;
      // The plugin is installed but cannot resolve configs here (e.g. its Python lacks the
      // framework): the framework is not usable now, and says why next to its field.
      unusable.set(fr.name, e.message);
      f.framework.setError(`${fr.name} cannot be used now: ${e.message}`);
      fill(optionsBox, h("p.sub", "No options: the framework cannot resolve configs."));
      return;
    }
    unusable.delete(fr.name);
    f.framework.setError("");
    renderOptions();
  }

  function renderOptions() {
    const dev = mode() === "developer";
    filter.hidden = !dev;
    const needle = filter.value.trim().toLowerCase();
    const rows = [];
    for (const opt of options) {
      let fld = optionFields.get(opt.key);
      if (!fld) {
        let control;
        if (opt.type === "bool") {
          control = h("select", h("option", { value: "" }, `default (${shown(opt.default) || "framework's"})`),
            h("option", { value: "true" }, "true"), h("option", { value: "false" }, "false"));
        } else {
          control = h("input", { type: "text", inputMode: opt.type === "int" || opt.type === "float" ? "decimal" : "text",
            placeholder: shown(opt.default) || "framework default", autocomplete: "off", spellcheck: false });
        }
        control.dataset.key = opt.key;
        control.addEventListener("input", invalidate);
        fld = field(opt.key, control, [opt.type, opt.description].filter(Boolean).join(" — "));
        fld.wrap.dataset.key = opt.key;
        if (!opt.user) fld.wrap.classList.add("developer");
        optionFields.set(opt.key, fld);
      }
      // An option with a value stays in sight whatever the filter: what is sent is what is seen.
      const visible = (dev || opt.user) &&
        (!needle || opt.key.toLowerCase().includes(needle) || fld.control.value !== "");
      fld.wrap.hidden = !visible;
      // Values set in developer mode that user mode does not offer stay, and are sent: the
      // resolver refuses them in user mode, next to their field.
      if (!visible && !(fld.control.value && !dev)) continue;
      fld.wrap.hidden = false;
      rows.push(fld.wrap);
    }
    fill(optionsBox, rows.length ? rows : h("p.sub", options.length ? "No option matches." : "This framework describes no options."));
  }

  function overrides() {
    const out = {};
    let bad = false;
    for (const opt of options) {
      const fld = optionFields.get(opt.key);
      if (!fld) continue;
      fld.setError("");
      const raw = fld.control.value;
      if (raw.trim() === "") continue;
      try {
        out[opt.key] = parseValue(opt, raw);
      } catch (e) {
        fld.setError(`${opt.key} must be ${e.message}.`);
        bad = true;
      }
    }
    return bad ? null : out;
  }

  /** Put an API error next to the field it names (a quoted option key), else under the form. */
  function placeError(message) {
    for (const m of message.matchAll(/'([^']+)'|`([^`]+)`/g)) {
      const key = m[1] || m[2];
      const fld = optionFields.get(key) || optionFields.get(key.split(".")[0]);
      if (fld) { fld.setError(message); fld.wrap.hidden = false; return fld; }
    }
    formError.textContent = message;
    return null;
  }

  function request() {
    const fr = current();
    return {
      framework: fr?.name, task: f.task.control.value, project: f.project.control.value,
      release: f.release.control.value, name: f.name.control.value.trim(), mode: mode(),
    };
  }

  async function preflight() {
    invalidate();
    const checking = ++preflights;
    formError.textContent = "";
    for (const k of ["framework", "project", "release", "name"]) f[k].setError("");
    const r = request();
    let ok = true;
    if (!r.framework || !current()?.startable) { f.framework.setError(current()?.problem || "Choose a framework."); ok = false; }
    else if (unusable.has(r.framework)) { f.framework.setError(`${r.framework} cannot be used now: ${unusable.get(r.framework)}`); ok = false; }
    if (!r.task) { f.task.setError("This framework has no task with a base config."); ok = false; }
    if (!r.project) { f.project.setError("Choose a project."); ok = false; }
    if (!r.release) { f.release.setError("Choose a release ZIP."); ok = false; }
    if (!r.name) { f.name.setError("Give the training a name."); ok = false; }
    else if (!NAME.test(r.name)) { f.name.setError("Use letters, digits, '.', '_' and '-' (at most 128, not starting with '.', '_' or '-')."); ok = false; }
    const config = overrides();
    if (!config) ok = false;
    // The release must extract (a broken ZIP is said here, not by a failed run).
    if (ok && !(await extract())) ok = false;
    if (checking !== preflights) return false;
    fill(previewBox);
    if (!config) return false;
    let resolved;
    try {
      const named = NAME.test(r.name);
      resolved = await post("/training/config/resolve", {
        framework: r.framework, task: r.task, mode: r.mode, overrides: config,
        training_name: named ? r.name : undefined,
        // The server then says whether the name is free (it belongs to the run that made it).
        project_id: named && NAME.test(r.project) ? r.project : undefined,
      });
    } catch (e) {
      if (checking === preflights) placeError(e.message);
      return false;
    }
    // The form changed while the preflight ran (every change invalidates): it checked
    // something else.
    if (checking !== preflights) {
      formError.textContent = "The form changed during the preflight: preflight again.";
      return false;
    }
    if (resolved.training_name_problem) {
      f.name.setError(resolved.training_name_problem);
      ok = false;
    }
    for (const rej of resolved.rejected || []) {
      const fld = optionFields.get(rej.key);
      const msg = `${rej.key}: ${rej.reason}`;
      if (fld) { fld.setError(msg); fld.wrap.hidden = false; } else formError.textContent = msg;
      ok = false;
    }
    fill(previewBox, h("section.card", { "aria-labelledby": "preview-h" },
      h("h2#preview-h", "Preflight"),
      h("h3", "Command line"), h("pre.cmd#command", resolved.cli_preview),
      h("h3", `Resolved config (${resolved.format})`), h("pre.yaml#resolved", resolved.resolved_yaml)));
    if (ok) {
      preflightOk = JSON.stringify({ ...r, config });
      startButton.disabled = false;
      toast("Preflight passed: Start is enabled.");
    } else {
      formError.textContent ||= "Fix the fields marked above, then preflight again.";
    }
    return ok;
  }

  async function start() {
    const r = request();
    const config = overrides();
    if (!config || preflightOk !== JSON.stringify({ ...r, config })) {
      formError.textContent = "Preflight what is on the form first.";
      startButton.disabled = true;
      return;
    }
    startButton.disabled = true;
    try {
      const run = await post("/training/start", {
        project_id: r.project, training_name: r.name, framework: r.framework, task: r.task,
        release: r.release, mode: r.mode, config,
      });
      toast(`Training ${r.name} started.`);
      location.hash = `#/runs/${encodeURIComponent(run.run_id)}`;
    } catch (e) {
      if (e instanceof ApiError && e.status === 409) f.name.setError(e.message);
      else placeError(e.message);
    }
  }

  /**
   * Extract the chosen release (nothing to do when it is extracted already) and show its dataset;
   * false, with the error by the Release field, when it cannot be. A reply for a release that is
   * no longer the chosen one is dropped.
   */
  let releaseAsked = 0;
  async function extract() {
    const r = request();
    const asked = ++releaseAsked;
    f.project.setError(""); f.release.setError("");
    if (!r.project) { f.project.setError("Choose a project."); return false; }
    if (!r.release) { f.release.setError("Choose a release ZIP."); return false; }
    const stale = () => asked !== releaseAsked;
    extractButton.disabled = true;
    fill(dataset, h("p.sub", "Extracting the release (once; nothing to do when it is extracted)…"));
    try {
      const o = await post("/training/extract-release", { zip_path: `projects/${r.project}/releases/${r.release}` });
      if (stale()) return false;
      const names = Array.isArray(o.class_names) ? o.class_names : [];
      fill(dataset, h("dl.summary",
        h("div", h("dt", "Dataset folder"), h("dd", h("code#dataset-dir", o.dataset_dir))),
        o.layout ? h("div", h("dt", "Layout"), h("dd", o.layout)) : null,
        o.splits ? h("div", h("dt", "Splits"), h("dd", Array.isArray(o.splits) ? o.splits.join(", ") : Object.keys(o.splits).join(", "))) : null,
        h("div", h("dt", `Classes (${names.length})`), h("dd#class-names", names.join(", ") || "—"))));
      return true;
    } catch (e) {
      if (stale()) return false;
      fill(dataset);
      f.release.setError(plain(e.message));
      return false;
    } finally {
      if (!stale()) extractButton.disabled = false;
    }
  }

  f.framework.control.addEventListener("change", () => { fillTasks(); invalidate(); loadOptions(); });
  f.task.control.addEventListener("change", () => { invalidate(); loadOptions(); });
  f.project.control.addEventListener("change", () => { fillReleases(); invalidate(); });
  f.release.control.addEventListener("change", () => {
    releaseAsked++;
    extractButton.disabled = false;
    f.release.setError("");
    fill(dataset);
    invalidate();
  });
  f.name.control.addEventListener("input", invalidate);
  for (const m of [modeUser, modeDev]) m.addEventListener("change", () => { invalidate(); renderOptions(); });
  filter.addEventListener("input", renderOptions);
  extractButton.addEventListener("click", extract);
  preflightButton.addEventListener("click", preflight);
  main.querySelector("#start-form").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && ev.target instanceof HTMLInputElement && startButton.disabled) {
      ev.preventDefault();
      preflight();
    }
  });

  // Defaults: the first startable framework, the only project / release when there is one.
  const first = frameworks.find((x) => x.startable);
  if (first) f.framework.control.value = first.name;
  fillTasks();
  if (projects.length === 1) f.project.control.value = projects[0].name;
  fillReleases();
  const p = projects.find((x) => x.name === f.project.control.value);
  if (p && p.releases.length === 1) f.release.control.value = p.releases[0].file;
  await loadOptions();
  return null;
}
