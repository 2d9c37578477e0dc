// Jobs: the project's fine-tuning jobs, newest first, filtered by status and base model, refreshed while any is
// still moving. A queued job shows its place in the cluster's queue (the job's `queue_position`: 1 is the next
// the scheduler claims, higher priorities first, then the oldest).

import { listAll } from "../api.js";
import { badge, field, h, link, pageHeader, poll, replace, table, time } from "../ui.js";

const STATUSES = ["validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"];
const ACTIVE = new Set(["validating_files", "queued", "running", "paused"]);

/** A job's status badge, and for a queued job its place in the queue (and its priority, when it has one). */
export function queueStatus(job) {
  const place = job.status === "queued" && job.queue_position ? `#${job.queue_position} in queue` : "";
  const priority = job.status === "queued" && job.priority ? `priority ${job.priority}` : "";
  const extra = [place, priority].filter(Boolean).join(", ");
  return [badge(job.status), extra ? h("span", { class: "queue" }, ` ${extra}`) : null];
}

export async function jobsPage(view, _params, query) {
  const statusSelect = h(
    "select",
    { name: "status" },
    h("option", { value: "" }, "Any status"),
    STATUSES.map((s) => h("option", { value: s }, s.replace(/_/g, " "))),
  );
  const modelSelect = h("select", { name: "model" }, h("option", { value: "" }, "Any model"));
  statusSelect.value = query.get("status") || "";
  const results = h("div", { id: "jobs-results", "aria-live": "polite", "aria-busy": "true" });
  const count = h("p", { class: "muted", id: "jobs-count" });
  const filters = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter jobs", onsubmit: (e) => e.preventDefault() },
    field("Status", statusSelect),
    field("Base model", modelSelect),
  );
  replace(view, pageHeader("Fine-tuning jobs", link("#/files", "Upload a file", { class: "button secondary" })), filters, count, results);

  let jobs = [];
  let wantedModel = query.get("model") || "";

  function syncAddress() {
    const params = new URLSearchParams();
    if (statusSelect.value) params.set("status", statusSelect.value);
    if (modelSelect.value) params.set("model", modelSelect.value);
    const hash = `#/jobs${params.toString() ? `?${params}` : ""}`;
    if (location.hash !== hash) history.replaceState(null, "", hash); // no hashchange: the page stays
  }

  function render() {
    const models = [...new Set(jobs.map((j) => j.model))].sort();
    const chosen = modelSelect.value || wantedModel;
    replace(
      modelSelect,
      h("option", { value: "" }, "Any model"),
      models.map((m) => h("option", { value: m }, m)),
    );
    if (models.includes(chosen)) modelSelect.value = chosen;
    const shown = jobs.filter(
      (j) => (!statusSelect.value || j.status === statusSelect.value) && (!modelSelect.value || j.model === modelSelect.value),
    );
    count.textContent = `${shown.length} of ${jobs.length} job${jobs.length === 1 ? "" : "s"}`;
    replace(
      results,
      table({
        caption: "Fine-tuning jobs",
        rows: shown,
        empty: jobs.length ? "No job matches these filters." : "No fine-tuning jobs yet. Create one with the SDK, the CLI or the API.",
        rowAttrs: (j) => ({ "data-job-id": j.id, "data-status": j.status }),
        columns: [
          { label: "Job", cell: (j) => link(`#/jobs/${encodeURIComponent(j.id)}`, j.id, { class: "mono" }) },
          { label: "Status", cell: queueStatus },
          { label: "Base model", cell: (j) => j.model },
          { label: "Tuned model", cell: (j) => j.fine_tuned_model || "—", class: "mono wrap" },
          { label: "Method", cell: (j) => j.method?.type || "supervised" },
          { label: "Created", cell: (j) => time(j.created_at) },
          { label: "Finished", cell: (j) => time(j.finished_at) },
        ],
      }),
    );
    results.setAttribute("aria-busy", "false");
  }

  statusSelect.addEventListener("change", () => {
    syncAddress();
    render();
  });
  modelSelect.addEventListener("change", () => {
    wantedModel = modelSelect.value;
    syncAddress();
    render();
  });

  async function refresh() {
    jobs = await listAll("/v1/fine_tuning/jobs", { query: { limit: 100 }, max: 500 });
    render();
    return true;
  }
  await refresh();
  let last = Date.now();
  // Every 3 s while some job is still moving, every 15 s otherwise (a job someone else creates shows up).
  return poll(async () => {
    const busy = jobs.some((j) => ACTIVE.has(j.status));
    if (Date.now() - last < (busy ? 3000 : 15000)) return true;
    last = Date.now();
    return refresh();
  }, 3);
}

export { ACTIVE };
