// Metrics per epoch as charts (uPlot): the losses in one, the quality metrics (precision, recall,
// mAP...) in another, with a table of the same numbers for keyboards and screen readers.

import uPlot from "../vendor/uplot.mjs";
import { fill, h } from "./dom.js";

const PALETTE = ["#1f6feb", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7d8c", "#57606a"];

function group(key) {
  if (/loss/i.test(key)) return "losses";
  if (/(precision|recall|map|mAP|bbox|segm|fitness|acc)/i.test(key)) return "quality";
  return null;
}

export function metricsCharts(box) {
  let plots = [];
  let signature = "";
  const observer = new ResizeObserver(() => {
    for (const p of plots) p.setSize({ width: Math.max(240, box.clientWidth - 4), height: 220 });
  });
  observer.observe(box);

  function destroyPlots() {
    for (const p of plots) p.destroy();
    plots = [];
  }

  return {
    /** epochs: [{step, epoch, metrics: {key: number}}] */
    update(epochs) {
      // One training step's epochs (the first step that reported any).
      const step = epochs[0]?.step;
      const rows = epochs.filter((e) => e.step === step).sort((a, b) => a.epoch - b.epoch);
      const keys = [...new Set(rows.flatMap((r) => Object.keys(r.metrics)))]
        .filter((k) => group(k) && rows.some((r) => typeof r.metrics[k] === "number"));
      const sig = JSON.stringify([step, keys, rows.map((r) => [r.epoch, keys.map((k) => r.metrics[k])])]);
      if (sig === signature) return;
      signature = sig;
      box.dataset.epochs = rows.map((r) => r.epoch).join(",");
      const open = box.querySelector("details.metrics-table")?.open ?? false;
      destroyPlots();
      if (!rows.length) {
        fill(box, h("p.sub", "No epoch has reported metrics yet."));
        return;
      }
      const xs = rows.map((r) => r.epoch);
      const parts = [];
      for (const [name, title] of [["losses", "Losses"], ["quality", "Precision, recall, mAP"]]) {
        const ks = keys.filter((k) => group(k) === name);
        if (!ks.length) continue;
        const el = h(`div.chart.chart-${name}`, { role: "img", "aria-label": `${title} per epoch` });
        parts.push(h("figure", h("figcaption", title), el));
        const data = [xs, ...ks.map((k) => rows.map((r) => (typeof r.metrics[k] === "number" ? r.metrics[k] : null)))];
        const opts = {
          width: Math.max(240, box.clientWidth - 4), height: 220,
          scales: { x: { time: false } },
          axes: [{ label: "epoch", values: (u, v) => v.map((x) => (Number.isInteger(x) ? x : "")) }, {}],
          series: [{ label: "epoch" }, ...ks.map((k, i) => ({ label: k, stroke: PALETTE[i % PALETTE.length], width: 2, points: { show: true, size: 5 } }))],
        };
        plots.push({ el, opts, data });
      }
      // The table of the numbers is built when it is opened (thousands of epochs make a big one).
      const table = h("details.metrics-table", h("summary", "The numbers"));
      const build = () => {
        if (table.querySelector("table")) return;
        table.append(h("div.table-wrap", h("table",
          h("thead", h("tr", h("th", { scope: "col" }, "epoch"), keys.map((k) => h("th", { scope: "col" }, k)))),
          h("tbody", rows.map((r) => h("tr", { "data-epoch": r.epoch }, h("th", { scope: "row" }, r.epoch),
            keys.map((k) => h("td", typeof r.metrics[k] === "number" ? +r.metrics[k].toPrecision(4) : "—"))))))));
      };
      table.addEventListener("toggle", () => { if (table.open) build(); });
      if (open) { build(); table.open = true; }
      fill(box, parts, table);
      plots = plots.map(({ el, opts, data }) => new uPlot(opts, data, el));
    },
    /** Forget what is drawn (after an error replaced it), so the next update draws again. */
    reset() {
      signature = "";
    },
    destroy() {
      observer.disconnect();
      destroyPlots();
    },
  };
}
