// Runs: a list with a status filter, the success rate, and live status and progress (refreshed
// every 2 s while the page is visible).

import { get, query } from "./api.js";
import { duration, fill, h, keepFocus, progressBar, shortId, statusBadge, when } from "./dom.js";

const STATUSES = ["", "queued", "running", "succeeded", "failed", "cancelled"];
const PAGE = 50;

/** A run's progress: its running step's percent, else the share of steps that ended. */
export function runProgress(run) {
  if (run.status === "succeeded") return 100;
  const steps = run.steps || [];
  const running = steps.find((s) => s.status === "running" && s.progress && s.progress.percent != null);
  if (running) return running.progress.percent;
  if (!steps.length) return 0;
  const done = steps.filter((s) => ["succeeded", "skipped"].includes(s.status)).length;
  return (100 * done) / steps.length;
}

export async function runsView(main, params, ctx) {
  const status = STATUSES.includes(params.get("status")) ? params.get("status") : "";
  const offset = Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);
  const select = h("select#status-filter", {
    on: { change: () => { location.hash = `#/runs${query({ status: select.value })}`; } },
  }, STATUSES.map((s) => h("option", { value: s, selected: s === status }, s || "all")));
  const stats = h("div.stats", { "aria-live": "polite" });
  const tbody = h("tbody");
  const pager = h("div.pager");
  fill(main,
    h("div.head",
      h("h1", "Runs"),
      ctx.can("CreateTrainingRun") ? h("a.button.primary", { href: "#/start" }, "Start training") : null),
    stats,
    h("div.toolbar", h("label", { for: "status-filter" }, "Status"), select),
    h("div.table-wrap", h("table.runs",
      h("caption.sr-only", "Runs, newest first"),
      h("thead", h("tr", ["Run", "Workflow", "Status", "Progress", "Created", "By", "Duration"].map((c) => h("th", { scope: "col" }, c)))),
      tbody)),
    pager);

  let timer = null;
  let gone = false;
  async function refresh() {
    try {
      const [page, st] = await Promise.all([
        get(`/runs${query({ status, limit: PAGE, offset })}`),
        get("/runs/stats"),
      ]);
      const rate = st.success_rate == null ? "—" : `${(st.success_rate * 100).toFixed(0)} %`;
      const statsText = JSON.stringify([st, rate]);
      // The numbers are announced when they change, not at every refresh.
      if (stats.dataset.shown !== statsText) {
        stats.dataset.shown = statsText;
        fill(stats,
        h("div.stat", h("span.n", st.total), h("span", "runs")),
        ...["running", "succeeded", "failed", "cancelled"].map((s) =>
          h("div.stat", h("span.n", st.by_status?.[s] ?? 0), h("span", s))),
        h("div.stat#success-rate", h("span.n", rate), h("span", "success rate")));
      }
      // Progress of active runs comes from their steps.
      const details = await Promise.all(page.runs.map((r) =>
        r.status === "running" ? get(`/runs/${encodeURIComponent(r.id)}`).catch(() => r) : r));
      if (gone) return;
      keepFocus(tbody, () => fill(tbody, details.length ? details.map((r) => h("tr", { "data-run": r.id },
        h("td", h("a", { href: `#/runs/${encodeURIComponent(r.id)}`, title: r.id }, shortId(r.id))),
        h("td", r.workflow_name, r.params?.training_name ? h("div.sub", `${r.params.project ?? ""}/${r.params.training_name}`) : null),
        h("td", statusBadge(r.status)),
        h("td", r.status === "running" || r.status === "succeeded" ? progressBar(runProgress(r), `progress of run ${shortId(r.id)}`) : "—"),
        h("td", when(r.created_at)),
        h("td", r.created_by),
        h("td", duration(r.duration_ms)),
      )) : h("tr", h("td", { colSpan: 7 }, offset > 0 ? "No runs on this page." : status ? `No ${status} runs.` : "No runs yet."))));
      keepFocus(pager, () => fill(pager,
        offset > 0 ? h("a.button", { href: `#/runs${query({ status, offset: Math.max(0, offset - PAGE) })}` }, "Newer") : null,
        page.next_offset != null ? h("a.button", { href: `#/runs${query({ status, offset: page.next_offset })}` }, "Older") : null));
    } catch (e) {
      delete stats.dataset.shown;
      fill(stats, h("p.error", { role: "alert" }, `Cannot load runs: ${e.message}; retrying`));
    }
  }
  await refresh();
  const tick = () => {
    if (gone) return;
    timer = setTimeout(async () => { if (!document.hidden) await refresh(); tick(); }, 2000);
  };
  tick();
  return () => { gone = true; clearTimeout(timer); };
}
