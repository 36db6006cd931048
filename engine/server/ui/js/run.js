// A run: its DAG (steps coloured by status, live), steps with attempts and errors, the training's
// progress, a chart of the metrics per epoch, the live trainer log, the checkpoints; Stop, Retry,
// Export best.

import cytoscape from "../vendor/cytoscape.mjs";
import { ApiError, followLog, get, post, query } from "./api.js";
import { bytes, duration, fill, h, keepFocus, plain, progressBar, shortId, statusBadge, toast, when } from "./dom.js";
import { metricsCharts } from "./chart.js";

const ACTIVE = ["queued", "running"];
const COLORS = {
  queued: "#8a8f98", running: "#1f6feb", succeeded: "#1a7f37", failed: "#cf222e",
  cancelled: "#9a6700", skipped: "#b0b4ba",
};

/** The step whose progress a run page shows: the one with epochs, else the running one. */
function trainingStep(steps) {
  return steps.find((s) => s.progress && s.progress.epochs) ||
    steps.find((s) => s.status === "running") || null;
}

/**
 * Layers of the DAG: a step's layer is one more than its deepest dependency (the longest path
 * from a root), so every edge points down.
 */
function layers(steps) {
  const byId = new Map(steps.map((s) => [s.step_id, s]));
  const depth = new Map();
  const visit = (id, seen) => {
    if (depth.has(id)) return depth.get(id);
    if (seen.has(id)) return 0; // a cycle cannot be stored, but never loop on one
    seen.add(id);
    const needs = (byId.get(id)?.needs || []).filter((n) => byId.has(n));
    const d = needs.length ? 1 + Math.max(...needs.map((n) => visit(n, seen))) : 0;
    depth.set(id, d);
    return d;
  };
  for (const s of steps) visit(s.step_id, new Set());
  const rows = [];
  for (const s of steps) (rows[depth.get(s.step_id)] ||= []).push(s.step_id);
  const pos = {};
  rows.forEach((row, y) => row.forEach((id, x) => { pos[id] = { x: (x - (row.length - 1) / 2) * 130, y: y * 80 }; }));
  return { pos, layers: rows.length };
}

function dag(container, steps) {
  const { pos, layers: depth } = layers(steps);
  // Tall enough for the layers (scrolling the page is easier than reading a squeezed graph).
  container.style.height = `${Math.min(640, Math.max(200, depth * 80 + 60))}px`;
  const cy = cytoscape({
    container,
    elements: [
      ...steps.map((s) => ({ data: { id: s.step_id, label: s.step_id, status: s.status }, position: pos[s.step_id] })),
      ...steps.flatMap((s) => (s.needs || []).filter((n) => pos[n]).map((n) => ({ data: { id: `${n}->${s.step_id}`, source: n, target: s.step_id } }))),
    ],
    layout: { name: "preset", fit: true, padding: 24 },
    style: [
      { selector: "node", style: {
        label: "data(label)", "background-color": (n) => COLORS[n.data("status")] || "#8a8f98",
        color: "#1f2328", "font-size": 12, "text-valign": "bottom", "text-margin-y": 4,
        width: 22, height: 22 } },
      { selector: "node[status = 'running']", style: { "border-width": 4, "border-color": "#9ec5fe" } },
      { selector: "edge", style: { width: 2, "line-color": "#c0c4ca", "target-arrow-shape": "triangle",
        "target-arrow-color": "#c0c4ca", "curve-style": "bezier" } },
    ],
    // Labels stay readable: never zoomed out below 0.6 (a wide graph is panned instead), and a
    // person may zoom in.
    minZoom: 0.6, maxZoom: 2,
    userZoomingEnabled: true, userPanningEnabled: true, boxSelectionEnabled: false, autoungrabify: true,
  });
  if (cy.zoom() <= 0.6) {
    // Wider than the box at the smallest zoom: start at the top, centred.
    cy.zoom(0.6);
    const roots = cy.nodes().filter((n) => n.indegree() === 0);
    cy.center(roots.length ? roots : cy.nodes());
    cy.panBy({ x: 0, y: 30 - cy.pan().y });
  }
  return {
    update(steps) {
      for (const s of steps) cy.getElementById(s.step_id).data("status", s.status);
      container.dataset.statuses = steps.map((s) => `${s.step_id}:${s.status}`).join(" ");
    },
    destroy: () => cy.destroy(),
  };
}

export async function runView(main, id, ctx) {
  let run;
  try {
    run = await get(`/runs/${encodeURIComponent(id)}`);
  } catch (e) {
    fill(main, h("section.card", h("h1", "Run not found"), h("p.error", e.message), h("a", { href: "#/runs" }, "All runs")));
    return null;
  }
  id = run.id;
  const title = h("h1", `Run ${shortId(id)}`);
  const actions = h("div.actions");
  const summary = h("dl.summary");
  const training = h("section.card#training", { "aria-labelledby": "training-h" });
  const dagBox = h("div.dag#dag", { role: "img", "aria-label": "The run's steps and their dependencies, coloured by status" });
  const stepsBody = h("tbody");
  const chartBox = h("div.charts#metrics");
  const checkpointsBox = h("div#checkpoints");
  const exportBox = h("div#export");
  const stepSelect = h("select#log-step");
  const follow = h("input#log-follow", { type: "checkbox", checked: true });
  const logState = h("span.log-state#log-state", { "aria-live": "polite" });
  const logBox = h("pre.log#log", { tabIndex: 0, "aria-label": "Trainer log" });
  const errorBox = h("div");
  const connection = h("p.error.banner#connection", { role: "status" });
  const actionBox = h("div");

  fill(main,
    h("div.head", h("div", h("a.back", { href: "#/runs" }, "← Runs"), title), actions),
    connection,
    actionBox,
    errorBox,
    summary,
    training,
    h("div.grid2",
      h("section.card", h("h2", "Steps"), dagBox,
        h("div.table-wrap", h("table.steps#steps",
          h("thead", h("tr", ["Step", "Uses", "Status", "Attempt", "Duration", "Error"].map((c) => h("th", { scope: "col" }, c)))),
          stepsBody))),
      h("section.card", { "aria-labelledby": "metrics-h" }, h("h2#metrics-h", "Metrics per epoch"), chartBox)),
    h("section.card", h("h2", "Trainer log"),
      h("div.toolbar", h("label", { for: "log-step" }, "Step"), stepSelect,
        h("label.check", follow, " Follow the end"), logState),
      logBox),
    h("section.card", h("h2", "Checkpoints"), exportBox, checkpointsBox));

  const graph = dag(dagBox, run.steps || []);
  const charts = metricsCharts(chartBox);
  let gone = false;
  let timer = null;
  let stopLog = null;
  let logStep = null;
  let lastCheckpoints = 0;

  let actionsShown = null;
  function renderActions() {
    // Rebuilt only when the set of controls changes: a focused button keeps its focus.
    const signature = `${run.status}|${!!trainingStep(run.steps || [])}`;
    if (signature === actionsShown) return;
    actionsShown = signature;
    const list = [];
    if (ACTIVE.includes(run.status) && ctx.can("ScheduleTrainingRun"))
      list.push(h("button.danger#stop", { type: "button", on: { click: stop } }, "Stop"));
    if (["failed", "cancelled"].includes(run.status) && ctx.can("ScheduleTrainingRun"))
      list.push(h("button#retry", { type: "button", on: { click: retry } }, "Retry"));
    if (run.status === "succeeded" && ctx.can("PublishTrainingRunTrainedModel") && trainingStep(run.steps || []))
      list.push(h("button#export-best", { type: "button", on: { click: exportBest } }, "Export best"));
    fill(actions, list);
  }

  function renderSummary() {
    const p = run.params || {};
    const model = (run.steps || []).map((s) => s.outputs).find((o) => o && o.model_id);
    fill(summary,
      h("div", h("dt", "Status"), h("dd#run-status", statusBadge(run.status))),
      h("div", h("dt", "Workflow"), h("dd", run.workflow_name)),
      p.project && p.training_name ? h("div", h("dt", "Training"), h("dd", `${p.project} / ${p.training_name}`)) : null,
      h("div", h("dt", "Created"), h("dd", `${when(run.created_at)} by ${run.created_by}`)),
      h("div", h("dt", "Duration"), h("dd", duration(run.duration_ms))),
      // The engine holding the run's lease (several engines may share the database).
      run.engine ? h("div", h("dt", "Engine"), h("dd", { title: run.engine }, shortId(run.engine))) : null,
      run.status === "queued" && !run.engine ? h("div", h("dt", "Engine"), h("dd", "waiting for an engine that offers its labels")) : null,
      model ? h("div", h("dt", "Model"), h("dd", h("a#run-model", { href: `#/models/${encodeURIComponent(model.model_id)}` }, `${model.name} v${model.version}`))) : null);
    const banner = run.error_message ? plain(run.error_message) : "";
    if (errorBox.textContent !== banner) {
      fill(errorBox, banner ? h("p.error.banner", { role: "alert" }, banner) : null);
    }
  }

  function renderTraining() {
    const step = trainingStep(run.steps || []);
    const pr = step?.progress;
    let percent = pr?.percent;
    if (step && step.status === "succeeded") percent = 100;
    fill(training,
      h("h2#training-h", "Progress"),
      step ? h("div",
        h("p", h("strong", step.step_id), " ",
          pr?.epochs ? h("span#epochs", `epoch ${pr.epoch ?? 0} of ${pr.epochs}`) : null,
          pr?.message ? h("span.sub", ` — ${pr.message}`) : null),
        h("div#progress", progressBar(percent ?? 0, "training progress")))
        : h("p.sub", ACTIVE.includes(run.status) ? "Waiting for a step to report progress." : "No step reported progress."));
  }

  function renderSteps() {
    // A retry's details stay open across refreshes.
    const open = new Set([...stepsBody.querySelectorAll("details[open]")].map((d) => d.closest("tr")?.dataset.step));
    keepFocus(stepsBody, () => fill(stepsBody, (run.steps || []).map((s) => h("tr", { "data-step": s.step_id },
      h("th", { scope: "row" }, s.step_id),
      h("td", s.uses, s.action ? h("span.sub", ` ${s.action}`) : null),
      h("td", statusBadge(s.status), s.cached_from ? h("div.sub", "cached") : null),
      h("td", s.attempt,
        s.retry_reason ? h("details.retry", { open: open.has(s.step_id) },
          h("summary", `retry after a${s.retry_reason === "infrastructure" ? "n infrastructure" : ""} failure`),
          h("p.err", plain(s.retry_error || ""))) : null,
        s.failure_kind ? h("div.sub", s.failure_kind) : null),
      h("td", duration(s.duration_ms)),
      h("td.err", plain(s.error_message || ""))))));
    graph.update(run.steps || []);
  }

  function renderStepChoices() {
    const steps = run.steps || [];
    const current = stepSelect.value;
    fill(stepSelect, h("option", { value: "" }, "the training (automatic)"),
      steps.map((s) => h("option", { value: s.step_id, selected: s.step_id === current }, s.step_id)));
  }

  /**
   * The step "automatic" follows: the running plugin step (a trainer's output), else the step
   * that trains (it reported epochs), else the last plugin step that started, else the running
   * step, else the first.
   */
  function autoStep() {
    const steps = run.steps || [];
    const plugin = (s) => !s.uses.startsWith("builtin/");
    return (steps.find((s) => s.status === "running" && plugin(s)) ||
      steps.find((s) => s.progress && s.progress.epochs) ||
      [...steps].reverse().find((s) => plugin(s) && s.started_at) ||
      steps.find((s) => s.status === "running") ||
      steps[0])?.step_id;
  }

  // The log, as text nodes of whole batches; the newest 5,000 lines are kept.
  let logLines = [];
  let logEnded = false;
  // Bounded in lines and in characters: a line longer than 10,000 characters is cut.
  const MAX_LINE = 10000;
  function appendLog(lines) {
    const atEnd = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 8;
    const text = lines.map((l) => (l.length > MAX_LINE
      ? `${l.slice(0, MAX_LINE)} … (${l.length - MAX_LINE} more characters)\n`
      : `${l}\n`)).join("");
    const node = document.createTextNode(text);
    logBox.append(node);
    logLines.push([node, lines.length, text.length]);
    let total = logLines.reduce((n, [, c]) => n + c, 0);
    let chars = logLines.reduce((n, [, , c]) => n + c, 0);
    while ((total > 5000 || chars > 2_000_000) && logLines.length > 1) {
      const [first, count, size] = logLines.shift();
      first.remove();
      total -= count;
      chars -= size;
    }
    if (follow.checked && (atEnd || total < 50)) logBox.scrollTop = logBox.scrollHeight;
  }

  /** Follow the chosen step's log (automatic: see autoStep); `fresh` clears what is shown. */
  let logAttempt = null;
  function startLog(fresh = true) {
    if (gone) return;
    if (stopLog) stopLog();
    if (fresh) { logBox.replaceChildren(); logLines = []; }
    logStep = stepSelect.value || autoStep();
    logAttempt = (run.steps || []).find((s) => s.step_id === logStep)?.attempt ?? null;
    logEnded = false;
    if (!fresh) appendLog([`── step ${logStep}${logAttempt > 1 ? `, attempt ${logAttempt}` : ""} ──`]);
    logBox.dataset.step = logStep || "";
    stopLog = followLog(id, logStep, {
      onLines: appendLog,
      onEnd: (status) => { logEnded = true; logState.textContent = `${logStep}: ended (${status})`; },
      onState: (state, msg) => {
        if (state !== "ended") logState.textContent = msg ? `${logStep}: ${state}: ${msg}` : `${logStep}: ${state}`;
        logBox.dataset.state = state;
      },
    });
  }
  stepSelect.addEventListener("change", () => startLog());
  follow.addEventListener("change", () => { if (follow.checked) logBox.scrollTop = logBox.scrollHeight; });

  async function loadMetrics() {
    try {
      const m = await get(`/runs/${encodeURIComponent(id)}/metrics`);
      if (!gone) charts.update(m.epochs);
    } catch (e) {
      charts.reset();
      fill(chartBox, h("p.error", `Cannot load metrics: ${e.message}`));
    }
  }

  async function loadCheckpoints() {
    try {
      const c = await get(`/runs/${encodeURIComponent(id)}/checkpoints`);
      lastCheckpoints = Date.now();
      keepFocus(checkpointsBox, () => fill(checkpointsBox, c.checkpoints.length
        ? h("div.table-wrap", h("table.checkpoints",
          h("thead", h("tr", ["File", "Step", "Epoch", "Size", "Modified"].map((x) => h("th", { scope: "col" }, x)))),
          h("tbody", c.checkpoints.map((f) => h("tr", { "data-file": f.name },
            h("td", h("code", f.path), f.best ? h("span.badge.best", "best") : null),
            h("td", f.step), h("td", f.epoch ?? "—"), h("td", bytes(f.size)), h("td", when(f.modified)))))))
        : h("p.sub", "No checkpoints yet.")));
    } catch (e) {
      fill(checkpointsBox, h("p.error", `Cannot load checkpoints: ${e.message}`));
    }
  }

  async function act(what, fn) {
    try {
      await fn();
      toast(what);
      await refresh();
    } catch (e) {
      // Said where the action was, not only in a passing toast.
      fill(actionBox, h("p.error.banner#action-error", { role: "alert" }, `${what} failed: ${plain(e.message)}`));
      toast(`${what} failed: ${e.message}`, true);
    }
  }
  function stop() {
    if (!confirm("Stop this run? Its programs get SIGTERM, then SIGKILL after the grace period.")) return;
    act("Stop requested", () => post(`/runs/${encodeURIComponent(id)}/cancel`));
  }
  function retry() {
    act("Retry started", () => post(`/runs/${encodeURIComponent(id)}/retry`)).then(startLog);
  }
  function exportBest() {
    fill(actionBox);
    act("Best weights exported", async () => {
      const r = await post(`/runs/${encodeURIComponent(id)}/export-best`);
      const out = r.outputs || {};
      fill(exportBox, h("p#exported", "Exported ", h("code", out.weights || "?"),
        out.weights_sha256 ? h("span.sub", ` sha256 ${String(out.weights_sha256).slice(0, 12)}…`) : null));
      await loadCheckpoints();
    });
  }

  async function refresh() {
    try {
      const fresh = await get(`/runs/${encodeURIComponent(id)}`);
      if (gone) return;
      connection.textContent = "";
      const ended = ACTIVE.includes(run.status) && !ACTIVE.includes(fresh.status);
      run = fresh;
      renderActions();
      renderSummary();
      renderTraining();
      renderSteps();
      if ((run.steps || []).length !== stepSelect.options.length - 1) renderStepChoices();
      if (gone) return;
      // Automatic: move on to the step that now has the output (keeping what was shown); any
      // step: follow it again when it runs again (a retry, from here or elsewhere).
      const want = autoStep();
      const followed = (run.steps || []).find((s) => s.step_id === logStep);
      if (!stepSelect.value && want && want !== logStep &&
          (logEnded || (run.steps || []).some((s) => s.step_id === want && s.status === "running"))) {
        startLog(false);
      } else if (followed && (followed.attempt !== logAttempt || (logEnded && followed.status === "running"))) {
        startLog(false);
      }
      await loadMetrics();
      if (ended || Date.now() - lastCheckpoints > 5000) await loadCheckpoints();
    } catch (e) {
      if (!(e instanceof ApiError)) {
        // The server does not answer: say so (what is shown may be stale) and keep trying.
        connection.textContent = `Cannot reach the server (${e.message}); what you see may be out of date. Retrying…`;
      } else if (e.status === 404) {
        gone = true;
        if (stopLog) stopLog();
        actionsShown = null;
        fill(actions);
        fill(errorBox, h("p.error.banner", { role: "alert" }, "This run was deleted."));
        const status = document.getElementById("run-status");
        if (status) fill(status, statusBadge("deleted"));
      }
    }
  }

  renderActions();
  renderSummary();
  renderTraining();
  renderSteps();
  renderStepChoices();
  await Promise.all([loadMetrics(), loadCheckpoints()]);
  startLog();
  const tick = () => {
    if (gone) return;
    const every = ACTIVE.includes(run.status) ? 1500 : 10000;
    timer = setTimeout(async () => { if (!document.hidden) await refresh(); tick(); }, every);
  };
  tick();
  return () => {
    gone = true;
    clearTimeout(timer);
    if (stopLog) stopLog();
    graph.destroy();
    charts.destroy();
  };
}
