// Registered models: per project, their versions, metrics and lineage (run, dataset, base
// model); Publish and Promote to a stage.

import { get, post, query } from "./api.js";
import { fill, h, shortId, toast, when } from "./dom.js";

const STAGES = ["development", "testing", "production"];

function headline(metrics) {
  if (!metrics || typeof metrics !== "object") return "—";
  const keys = Object.keys(metrics);
  const pick = keys.find((k) => /mAP50-95|bbox_mAP$|mAP$/i.test(k)) || keys.find((k) => /map/i.test(k)) || keys[0];
  if (!pick) return "—";
  const v = metrics[pick];
  return `${pick} ${typeof v === "number" ? +v.toPrecision(4) : JSON.stringify(v)}`;
}

export async function modelsView(main, params) {
  const project = params.get("project") || "";
  const [list, pj] = await Promise.all([get(`/models${query({ project })}`), get("/projects").catch(() => ({ projects: [] }))]);
  const models = Array.isArray(list) ? list : list.models || [];
  const select = h("select#model-project", {
    on: { change: () => { location.hash = `#/models${query({ project: select.value })}`; } },
  }, h("option", { value: "" }, "all projects"),
  pj.projects.map((p) => h("option", { value: p.name, selected: p.name === project }, p.name)));
  fill(main,
    h("div.head", h("h1", "Models")),
    h("div.toolbar", h("label", { for: "model-project" }, "Project"), select),
    h("div.table-wrap", h("table.models#models",
      h("caption.sr-only", "Registered models, newest first"),
      h("thead", h("tr", ["Model", "Project", "Framework", "Stage", "Published", "Metrics", "Registered"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", models.length ? models.map((m) => h("tr", { "data-model": m.id },
        h("td", h("a", { href: `#/models/${encodeURIComponent(m.id)}` }, `${m.name} v${m.version}`)),
        h("td", m.project), h("td", m.framework || "—"), h("td", m.stage || "—"),
        h("td", m.is_published ? h("span.badge.s-succeeded", "published") : "no"),
        h("td", headline(m.metrics)), h("td", when(m.created_on))))
        : h("tr", h("td", { colSpan: 7 }, "No registered models yet: a training's register step adds one."))))));
  return null;
}

export async function modelView(main, id, ctx) {
  let detail;
  try {
    detail = await get(`/models/${encodeURIComponent(id)}`);
  } catch (e) {
    fill(main, h("section.card", h("h1", "Model not found"), h("p.error", e.message), h("a", { href: "#/models" }, "All models")));
    return null;
  }
  const m = detail.model;
  const l = detail.lineage || {};
  const canPublish = ctx.can("PublishTrainingRunTrainedModel");
  const stage = h("select#stage", { "aria-label": "Stage" }, STAGES.map((s) => h("option", { value: s, selected: s === m.stage }, s)));
  const act = async (what, fn) => {
    try { await fn(); toast(what); await modelView(main, m.id, ctx); } catch (e) { toast(`${what} failed: ${e.message}`, true); }
  };
  const metrics = m.metrics && typeof m.metrics === "object" ? Object.entries(m.metrics) : [];
  fill(main,
    h("div.head", h("div", h("a.back", { href: "#/models" }, "← Models"), h("h1", `${m.name} v${m.version}`)),
      canPublish ? h("div.actions",
        m.is_published ? h("span.badge.s-succeeded#published", "published") :
          h("button.primary#publish", { type: "button", on: { click: () => act("Published", () => post(`/models/${encodeURIComponent(m.id)}/publish`)) } }, "Publish"),
        h("label", { for: "stage" }, "Stage"), stage,
        h("button#promote", { type: "button", on: { click: () => act(`Moved to ${stage.value}`, () => post(`/models/${encodeURIComponent(m.id)}/promote`, { stage: stage.value })) } }, "Promote"))
        : (m.is_published ? h("span.badge.s-succeeded#published", "published") : null)),
    h("section.card", h("h2", "Model"), h("dl.summary",
      h("div", h("dt", "Project"), h("dd", m.project)),
      h("div", h("dt", "Framework"), h("dd", m.framework || "—")),
      h("div", h("dt", "Task"), h("dd", m.task || "—")),
      h("div", h("dt", "Stage"), h("dd#model-stage", m.stage || "—")),
      h("div", h("dt", "Weights"), h("dd", h("code", m.file_path))),
      h("div", h("dt", "Format"), h("dd", m.format || "—")),
      h("div", h("dt", "Input size"), h("dd", m.input_size ?? "—")),
      h("div", h("dt", "Classes"), h("dd", (m.class_names || []).join(", ") || "—")),
      h("div", h("dt", "Registered"), h("dd", `${when(m.created_on)} by ${m.created_by}`)),
      h("div", h("dt", "Published"), h("dd", m.published_at ? when(m.published_at) : "no")),
      m.production_at ? h("div", h("dt", "In production since"), h("dd", when(m.production_at))) : null)),
    h("section.card", h("h2", "Metrics"), metrics.length
      ? h("table.kv", h("tbody", metrics.map(([k, v]) => h("tr", h("th", { scope: "row" }, k), h("td", typeof v === "number" ? +v.toPrecision(5) : JSON.stringify(v))))))
      : h("p.sub", "No metrics recorded.")),
    h("section.card", h("h2", "Lineage"), h("dl.summary",
      h("div", h("dt", "Training run"), h("dd", l.training_run ? h("a#lineage-run", { href: `#/runs/${encodeURIComponent(l.training_run.id)}` }, `${shortId(l.training_run.id)} (${l.training_run.workflow_name}, ${l.training_run.status})`) : "—",
        l.training_step_id ? h("span.sub", ` step ${l.training_step_id}`) : null)),
      h("div", h("dt", "Dataset"), h("dd", l.dataset ? h("code", typeof l.dataset === "string" ? l.dataset : JSON.stringify(l.dataset)) : "—")),
      h("div", h("dt", "Base model"), h("dd", l.base_model_record ? h("a", { href: `#/models/${encodeURIComponent(l.base_model_record.id)}` }, `${l.base_model_record.name} v${l.base_model_record.version}`) : (l.base_model || "—"))))),
    h("section.card", h("h2", "Versions"), h("div.table-wrap", h("table",
      h("thead", h("tr", ["Version", "Stage", "Published", "Registered"].map((c) => h("th", { scope: "col" }, c)))),
      // The API lists the other versions; this one is among them here.
      h("tbody", [m, ...(detail.versions || []).filter((v) => v.id !== m.id)]
        .sort((a, b) => b.version - a.version).map((v) => h("tr",
        h("td", v.id === m.id ? h("strong", `v${v.version} (this one)`) : h("a", { href: `#/models/${encodeURIComponent(v.id)}` }, `v${v.version}`)),
        h("td", v.stage || "—"), h("td", v.is_published ? "yes" : "no"), h("td", when(v.created_on)))))))));
  return null;
}
