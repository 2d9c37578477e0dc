// A line chart of a job's metrics over steps, drawn by uPlot (vendored, static/vendor/uplot): train and validation
// series on one canvas. The canvas is no use to a screen reader, so the figure also has a caption saying what it
// plots and how many points it holds, and a table of the same numbers behind a disclosure.
//
// The figure's data-points (every value to plot), data-steps and data-series-<key> attributes say what the chart was
// given, and data-drawn what uPlot holds after drawing it; the console's end-to-end test reads them.

import { h, number, replace } from "./ui.js";

const COLORS = ["#2f5bd3", "#d9730d", "#1b8a5a", "#a23bb5"];

/**
 * series: [{key, label}], the keys of a metrics event's data (train_loss, valid_loss, ...). Returns
 * {el, update(rows)} where rows are metrics events' data ({step, ...}), in any order.
 */
export function metricChart({ id, title, series }) {
  const canvasBox = h("div", { class: "chart-canvas", "aria-hidden": "true" });
  const caption = h("figcaption", { id: `${id}-caption` });
  const tableBox = h("div", { class: "table-wrap" });
  const details = h("details", {}, h("summary", {}, `${title}: the numbers`), tableBox);
  const el = h(
    "figure",
    { class: "chart", id, role: "group", "aria-labelledby": `${id}-title`, "aria-describedby": `${id}-caption` },
    h("h3", { id: `${id}-title` }, title),
    canvasBox,
    caption,
    details,
  );
  let plot = null;
  let data = [[], ...series.map(() => [])];

  function build() {
    if (!window.uPlot) {
      replace(canvasBox, h("p", { class: "muted" }, "The chart library did not load; the numbers are below."));
      return;
    }
    const width = Math.max(240, canvasBox.clientWidth || 600);
    plot = new window.uPlot(
      {
        width,
        height: 240,
        scales: { x: { time: false } },
        legend: { live: true },
        cursor: { drag: { x: true, y: false } },
        axes: [
          { label: "step", stroke: "currentColor", grid: { stroke: "rgba(128,128,128,0.2)" } },
          { stroke: "currentColor", grid: { stroke: "rgba(128,128,128,0.2)" }, size: 60 },
        ],
        series: [
          { label: "step" },
          ...series.map((s, i) => ({
            label: s.label,
            stroke: COLORS[i % COLORS.length],
            width: 2,
            dash: s.key.startsWith("valid") ? [6, 4] : undefined,
            spanGaps: true, // validation is measured every few steps: join its points
            points: { show: s.key.startsWith("valid") ? true : undefined, size: 6 },
            value: (_u, v) => (v === null || v === undefined ? "—" : v.toFixed(4)),
          })),
        ],
      },
      data,
      canvasBox,
    );
    new ResizeObserver(() => {
      const w = canvasBox.clientWidth;
      if (plot && w && Math.abs(w - plot.width) > 2) plot.setSize({ width: w, height: 240 });
    }).observe(canvasBox);
  }

  function renderTable() {
    const [steps, ...columns] = data;
    if (!steps.length) {
      replace(tableBox, h("p", { class: "empty" }, "No steps reported yet."));
      return;
    }
    replace(
      tableBox,
      h(
        "table",
        { class: "chart-data" },
        h("caption", { class: "visually-hidden" }, title),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Step"), series.map((s) => h("th", { scope: "col" }, s.label)))),
        h(
          "tbody",
          {},
          steps.map((step, row) =>
            h("tr", {}, h("th", { scope: "row" }, step), columns.map((values) => h("td", {}, number(values[row])))),
          ),
        ),
      ),
    );
  }

  function update(rows) {
    const bySteps = new Map();
    for (const row of rows) {
      if (typeof row.step !== "number") continue;
      bySteps.set(row.step, { ...(bySteps.get(row.step) || {}), ...row });
    }
    const plotted = (row) => series.some((s) => typeof row[s.key] === "number" && Number.isFinite(row[s.key]));
    const steps = [...bySteps.keys()].filter((step) => plotted(bySteps.get(step))).sort((a, b) => a - b);
    data = [
      steps,
      ...series.map((s) =>
        steps.map((step) => {
          const value = bySteps.get(step)[s.key];
          return typeof value === "number" && Number.isFinite(value) ? value : null;
        }),
      ),
    ];
    const counts = series.map((_, i) => data[i + 1].filter((v) => v !== null).length);
    const total = counts.reduce((a, b) => a + b, 0);
    el.dataset.points = String(total);
    el.dataset.steps = String(steps.length);
    series.forEach((s, i) => {
      el.dataset[`series${s.key.replace(/(^|_)(\w)/g, (_m, _u, c) => c.toUpperCase())}`] = String(counts[i]);
    });
    replace(
      caption,
      steps.length
        ? `${series.map((s, i) => `${s.label}: ${counts[i]} points`).join(", ")}, steps ${steps[0]} to ${steps.at(-1)}.`
        : "No steps reported yet.",
    );
    if (!plot && canvasBox.isConnected) build();
    if (plot) draw();
    else if (!canvasBox.isConnected && !mountPending) {
      // Pages are built detached and shown when ready (app.js): draw once the figure is in the document.
      mountPending = true;
      setTimeout(mount, 0);
    }
    if (details.open) renderTable();
  }

  // What uPlot itself holds once it has drawn: data-drawn, the values it plots (read back from the chart).
  function draw() {
    plot.setData(data);
    el.dataset.drawn = String(plot.data.slice(1).reduce((n, values) => n + values.filter((v) => v !== null).length, 0));
  }

  let mountPending = false;
  function mount(tries = 0) {
    mountPending = false;
    if (plot) return;
    if (!canvasBox.isConnected) {
      if (tries < 50) {
        mountPending = true;
        setTimeout(() => mount(tries + 1), 100);
      }
      return;
    }
    build(); // the canvas is sized from its box, so it is built once the figure is in the page
    if (plot) draw();
  }
  el.mount = () => mount(); // app.js calls it as soon as the page is shown

  details.addEventListener("toggle", () => details.open && renderTable());
  update([]);
  return { el, update };
}
