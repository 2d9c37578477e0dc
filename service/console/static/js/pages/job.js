// A job: what it is, its live loss and accuracy (train and validation, from its metrics events), its evaluation
// against its base, its hyperparameters as resolved, checkpoints and events, and cancel / pause / resume.
// Polled every 2 s while the job (or its evaluation) is still moving; events are fetched newest first, each once.

import { api, apiText, listAll } from "../api.js";
import { metricChart } from "../chart.js";
import {
  actionButton,
  badge,
  facts,
  h,
  link,
  number,
  pageHeader,
  poll,
  replace,
  table,
  time,
  toast,
} from "../ui.js";
import { ACTIVE } from "./jobs.js";

const EVALUATION_OPEN = new Set(["pending", "deploying", "running"]); // service/job_evaluation.py OPEN_STAGES

function evaluationSettled(job) {
  return !job.evaluation || !EVALUATION_OPEN.has(job.evaluation.status);
}

function hyperparameters(job) {
  const method = job.method || {};
  const type = method.type || "supervised";
  const resolved = method[type]?.hyperparameters || job.hyperparameters || {};
  const rows = Object.entries(resolved).sort(([a], [b]) => a.localeCompare(b));
  return h(
    "section",
    { "aria-labelledby": "hp-title", class: "card" },
    h("h2", { id: "hp-title" }, "Hyperparameters"),
    h(
      "p",
      { class: "muted" },
      `Method: ${type}. "auto" values are resolved from the dataset when the job's files are validated.`,
    ),
    facts(rows.map(([k, v]) => [k.replace(/_/g, " "), typeof v === "object" ? JSON.stringify(v) : String(v)]), {
      id: "hyperparameters",
    }),
  );
}

function evaluationSection(job) {
  const ev = job.evaluation;
  if (!ev) return null;
  const results = ev.results || {};
  const reward = ev.metric === "mean_reward";
  const format = (r) => (r?.score === undefined ? "—" : reward ? r.score.toFixed(3) : `${(r.score * 100).toFixed(1)}%`);
  const rows = [
    ["Tuned", results.tuned],
    ["Compared", results.compare],
  ].filter(([, r]) => r);
  return h(
    "section",
    { "aria-labelledby": "eval-title", class: "card", id: "evaluation" },
    h("h2", { id: "eval-title" }, "Evaluation against the base"),
    facts([
      ["Status", badge(ev.status || "pending")],
      ["Rows from", ev.source],
      ["Compared with", ev.compare_to],
      ["Improvement", ev.improvement === undefined ? null : reward ? ev.improvement.toFixed(3) : `${(ev.improvement * 100).toFixed(1)} points`],
      ["Deployed", "deployed" in ev ? (ev.deployed ? "yes" : "no") : null],
      ["Note", ev.reason],
    ]),
    rows.length
      ? table({
          caption: "The tuned model and the model it is compared with, on the same rows",
          rows,
          columns: [
            { label: "", cell: ([role]) => h("strong", {}, role) },
            { label: "Model", cell: ([, r]) => r.model, class: "mono wrap" },
            { label: reward ? "Mean reward" : "Score", cell: ([, r]) => format(r) },
            { label: "Passed", cell: ([, r]) => number(r.passed) },
            { label: "Failed", cell: ([, r]) => number(r.failed) },
            { label: "Errored", cell: ([, r]) => number(r.errored) },
            { label: "Rows", cell: ([, r]) => number(r.total) },
          ],
        })
      : h("p", { class: "muted" }, "Results appear here when both models have answered."),
  );
}

export async function jobPage(view, [jobId]) {
  const path = `/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}`;
  let job = await api(path);
  const events = new Map(); // id -> event
  let checkpoints = [];

  const actions = h("div", { class: "actions", id: "job-actions" });
  const summary = h("div", { id: "job-summary" });
  const evaluationBox = h("div", {});
  const hyperBox = h("div", {});
  const loss = metricChart({
    id: "chart-loss",
    title: "Loss",
    series: [
      { key: "train_loss", label: "Training loss" },
      { key: "valid_loss", label: "Validation loss" },
    ],
  });
  const accuracy = metricChart({
    id: "chart-accuracy",
    title: "Token accuracy",
    series: [
      { key: "train_mean_token_accuracy", label: "Training accuracy" },
      { key: "valid_mean_token_accuracy", label: "Validation accuracy" },
    ],
  });
  const checkpointsBox = h("div", { id: "checkpoints" });
  const eventsBox = h("div", { id: "events" });
  const logBox = h("pre", { class: "log", id: "trainer-log", tabindex: "0", "aria-label": "Trainer log" });
  const logDetails = h("details", {}, h("summary", {}, "Trainer log (the latest attempt)"), logBox);
  logDetails.addEventListener("toggle", async () => {
    if (!logDetails.open) return;
    logBox.textContent = "Loading…";
    try {
      logBox.textContent = await apiText(`${path}/logs`);
    } catch (error) {
      logBox.textContent = error.status === 404 ? `${error.message}` : `Could not load the log: ${error.message}`;
    }
  });
  const title = pageHeader(`Job ${job.id}`);
  title.append(actions);

  replace(
    view,
    h("p", { class: "breadcrumb" }, link("#/jobs", "← All jobs")),
    title,
    summary,
    h(
      "section",
      { "aria-labelledby": "charts-title", class: "card" },
      h("h2", { id: "charts-title" }, "Training curves"),
      h("div", { class: "charts" }, loss.el, accuracy.el),
    ),
    evaluationBox,
    hyperBox,
    h("section", { "aria-labelledby": "ckpt-title", class: "card" }, h("h2", { id: "ckpt-title" }, "Checkpoints"), checkpointsBox),
    h("section", { "aria-labelledby": "events-title", class: "card" }, h("h2", { id: "events-title" }, "Events"), eventsBox, logDetails),
  );

  async function act(verb, question) {
    if (question && !window.confirm(question)) return;
    job = await api(`${path}/${verb}`, { method: "POST" });
    toast(`Job ${verb === "cancel" ? "cancelled" : verb === "pause" ? "paused" : "resumed"}: now ${job.status}.`);
    renderJob();
  }

  function renderJob() {
    const terminal = !ACTIVE.has(job.status);
    replace(
      actions,
      !terminal ? actionButton("Cancel", () => act("cancel", `Cancel ${job.id}? It cannot be resumed.`), { class: "danger" }) : null,
      job.status === "queued" || job.status === "running" ? actionButton("Pause", () => act("pause"), { class: "secondary" }) : null,
      job.status === "paused" ? actionButton("Resume", () => act("resume")) : null,
      job.fine_tuned_model
        ? link(
            `#/playground?model=${encodeURIComponent(job.fine_tuned_model)}&base=${encodeURIComponent(job.model)}`,
            "Try in the playground",
            { class: "button" },
          )
        : null,
    );
    replace(
      summary,
      facts(
        [
          ["Status", h("span", { id: "job-status" }, badge(job.status))],
          ["Queue position", job.status === "queued" && job.queue_position ? h("span", { id: "job-queue" }, `#${job.queue_position}`) : null],
          ["Base model", job.model],
          ["Tuned model", job.fine_tuned_model ? h("span", { class: "mono" }, job.fine_tuned_model) : null],
          ["Training file", link(`#/files/${encodeURIComponent(job.training_file)}`, job.training_file, { class: "mono" })],
          ["Validation file", job.validation_file ? link(`#/files/${encodeURIComponent(job.validation_file)}`, job.validation_file, { class: "mono" }) : null],
          ["Priority", job.priority ? String(job.priority) : null],
          ["Devices", job.resources ? `${job.resources.nodes} × ${job.resources.gpus_per_node}` : null],
          ["Created", time(job.created_at)],
          ["Estimated finish", job.estimated_finish ? time(job.estimated_finish) : null],
          ["Finished", job.finished_at ? time(job.finished_at) : null],
          ["Trained tokens", job.trained_tokens ? number(job.trained_tokens) : null],
          ["Suffix", job.user_provided_suffix],
          ["Error", job.error ? h("span", { class: "error-text" }, `${job.error.code}: ${job.error.message}`) : null],
        ],
        { class: "facts card" },
      ),
    );
    replace(evaluationBox, evaluationSection(job));
    replace(hyperBox, hyperparameters(job));
  }

  function renderEvents() {
    const all = [...events.values()].sort((a, b) => a.created_at - b.created_at || a.id.localeCompare(b.id));
    const metrics = all.filter((e) => e.type === "metrics" && e.data).map((e) => e.data);
    loss.update(metrics);
    accuracy.update(metrics);
    const newest = all.slice(-200).reverse();
    replace(
      eventsBox,
      newest.length
        ? h(
            "ol",
            { class: "events", reversed: true, "aria-label": `The newest ${newest.length} of ${all.length} events` },
            newest.map((e) =>
              h(
                "li",
                { class: `event event-${e.level}` },
                time(e.created_at),
                " ",
                h("span", { class: `level level-${e.level}` }, e.level),
                " ",
                e.message,
              ),
            ),
          )
        : h("p", { class: "empty" }, "No events yet."),
    );
  }

  function renderCheckpoints() {
    replace(
      checkpointsBox,
      table({
        caption: "Checkpoints, newest first",
        rows: checkpoints,
        empty: "No checkpoints yet.",
        columns: [
          { label: "Step", cell: (c) => number(c.step_number) },
          { label: "Model", cell: (c) => c.fine_tuned_model_checkpoint, class: "mono wrap" },
          {
            label: "Metrics",
            cell: (c) =>
              Object.entries(c.metrics || {})
                .filter(([, v]) => v !== null)
                .map(([k, v]) => `${k} ${number(v)}`)
                .join(", ") || "—",
          },
          { label: "Created", cell: (c) => time(c.created_at) },
          {
            label: "Try",
            cell: (c) =>
              link(
                `#/playground?model=${encodeURIComponent(c.fine_tuned_model_checkpoint)}&base=${encodeURIComponent(job.model)}`,
                "Playground",
              ),
          },
        ],
      }),
    );
  }

  async function fetchEvents() {
    if (!events.size) {
      for (const e of await listAll(`${path}/events`, { query: { limit: 1000 }, max: 50000 })) events.set(e.id, e);
      return true;
    }
    // Newest first: page back until an event already seen.
    let after;
    let added = false;
    for (;;) {
      const page = await api(`${path}/events`, { query: { limit: 200, after } });
      let seen = false;
      for (const e of page.data) {
        if (events.has(e.id)) seen = true;
        else {
          events.set(e.id, e);
          added = true;
        }
      }
      if (seen || !page.has_more || !page.data.length) return added;
      after = page.data.at(-1).id;
    }
  }

  async function refresh(first = false) {
    const [fresh, changed, ckpts] = await Promise.all([
      first ? job : api(path),
      fetchEvents(),
      listAll(`${path}/checkpoints`, { query: { limit: 100 }, max: 1000 }),
    ]);
    const jobChanged = first || JSON.stringify(fresh) !== JSON.stringify(job);
    job = fresh;
    if (jobChanged) renderJob();
    if (changed || first) renderEvents();
    if (first || ckpts.length !== checkpoints.length) {
      checkpoints = ckpts;
      renderCheckpoints();
    }
  }

  await refresh(true);
  return poll(async () => {
    const settled = !ACTIVE.has(job.status) && evaluationSettled(job);
    await refresh();
    // one last look after the job settles, for the events and checkpoints written as it ended
    return !(settled && !ACTIVE.has(job.status) && evaluationSettled(job));
  }, 2);
}
