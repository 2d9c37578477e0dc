// Models (base and tuned, with where each is served) and endpoints (state, replicas, traffic and usage, scale to
// zero). Deploying and changing an endpoint is POST /v1/endpoints for its model (the live endpoint is updated:
// idle timeout, replicas); stopping it is DELETE /v1/endpoints/<id>.

import { api, listAll } from "../api.js";
import { actionButton, badge, field, h, link, number, pageHeader, poll, replace, table, time, toast } from "../ui.js";

const LIVE = new Set(["deploying", "ready", "idle", "failed"]);

function liveEndpoints(endpoints) {
  const byModel = new Map();
  for (const ep of endpoints) if (LIVE.has(ep.state) && !byModel.has(ep.model)) byModel.set(ep.model, ep);
  return byModel;
}

function scaleToZero(ep) {
  if (ep.idle_timeout_s === null || ep.idle_timeout_s === undefined) return "server default";
  if (ep.idle_timeout_s === 0) return "never";
  return `after ${number(ep.idle_timeout_s)} s idle`;
}

export async function modelsPage(view) {
  const results = h("div", { id: "models-results" });
  replace(view, pageHeader("Models"), results);
  async function refresh() {
    const [models, endpoints, jobs] = await Promise.all([
      api("/v1/models"),
      listAll("/v1/endpoints", { query: { limit: 100 }, max: 1000 }),
      listAll("/v1/fine_tuning/jobs", { query: { limit: 100 }, max: 500 }),
    ]);
    const served = liveEndpoints(endpoints);
    const baseOf = new Map(jobs.filter((j) => j.fine_tuned_model).map((j) => [j.fine_tuned_model, j.model]));
    for (const ep of endpoints) if (!baseOf.has(ep.model) && ep.kind !== "base") baseOf.set(ep.model, ep.base_model);
    const rows = [...models.data].sort((a, b) => (a.owned_by === "hone") - (b.owned_by === "hone") || b.created - a.created);
    replace(
      results,
      table({
        caption: "Models this project can use: its tuned models first, then the base models",
        rows,
        rowAttrs: (m) => ({ "data-model": m.id }),
        columns: [
          { label: "Model", cell: (m) => m.id, class: "mono wrap" },
          { label: "Kind", cell: (m) => (m.owned_by === "hone" ? "base" : "tuned") },
          { label: "Base", cell: (m) => baseOf.get(m.id) || "—" },
          { label: "Created", cell: (m) => time(m.created) },
          { label: "Endpoint", cell: (m) => (served.has(m.id) ? badge(served.get(m.id).state) : "not deployed") },
          {
            label: "Actions",
            cell: (m) =>
              h(
                "div",
                { class: "row-actions" },
                served.has(m.id)
                  ? link("#/endpoints", "Endpoint")
                  : actionButton(
                      "Deploy",
                      async () => {
                        const ep = await api("/v1/endpoints", { method: "POST", body: { model: m.id } });
                        toast(`Deploying ${m.id}: endpoint ${ep.id}.`);
                        await refresh();
                      },
                      { class: "secondary", "aria-label": `Deploy ${m.id}` },
                    ),
                link(
                  `#/playground?model=${encodeURIComponent(m.id)}${baseOf.has(m.id) ? `&base=${encodeURIComponent(baseOf.get(m.id))}` : ""}`,
                  "Playground",
                  { "aria-label": `Try ${m.id} in the playground` },
                ),
              ),
          },
        ],
      }),
    );
  }
  await refresh();
  return poll(async () => {
    await refresh();
    return true;
  }, 10);
}

function settingsForm(ep, onSaved) {
  const idle = h("input", { type: "number", min: "0", max: "2592000", step: "1", inputmode: "numeric", value: ep.idle_timeout_s ?? "" });
  const replicas = h("input", { type: "number", min: "1", max: "64", step: "1", inputmode: "numeric", value: String(ep.replicas) });
  const save = h("button", { type: "submit", class: "secondary" }, "Apply");
  const form = h(
    "form",
    { class: "endpoint-settings", "aria-label": `Settings of ${ep.model}` },
    field("Scale to zero after (s)", idle, "0: never; empty: the server's default"),
    field("Replicas", replicas),
    save,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { model: ep.model, replicas: Number(replicas.value) };
    if (idle.value !== "") body.idle_timeout_s = Number(idle.value);
    save.disabled = true;
    try {
      await api("/v1/endpoints", { method: "POST", body });
      toast(`Updated the endpoint of ${ep.model}.`);
      await onSaved();
    } catch (error) {
      toast(error.message, "error");
    } finally {
      save.disabled = false;
    }
  });
  return form;
}

export async function endpointsPage(view, _params, query) {
  const showStopped = h("input", { type: "checkbox", checked: query.get("stopped") === "1" });
  const results = h("div", { id: "endpoints-results" });
  const openForms = new Set(); // endpoints whose settings are open survive a refresh
  replace(
    view,
    pageHeader("Endpoints"),
    h(
      "p",
      { class: "muted" },
      "Each tuned model gets an endpoint when its job succeeds (unless the job says otherwise); an idle endpoint has " +
        "scaled to zero and the next request wakes it.",
    ),
    h("label", { class: "checkbox" }, showStopped, " Show stopped endpoints"),
    results,
  );
  async function refresh() {
    const endpoints = await listAll("/v1/endpoints", { query: { limit: 100 }, max: 1000 });
    const rows = endpoints.filter((ep) => showStopped.checked || ep.state !== "stopped");
    replace(
      results,
      table({
        caption: "Endpoints",
        rows,
        empty: "No endpoints. Deploy a model from the Models page.",
        rowAttrs: (ep) => ({ "data-endpoint-id": ep.id, "data-state": ep.state }),
        columns: [
          { label: "Model", cell: (ep) => [h("span", { class: "mono wrap" }, ep.model), h("br"), h("small", { class: "muted" }, ep.kind === "base" ? "base model" : `${ep.kind} of ${ep.base_model}`)] },
          { label: "State", cell: (ep) => [badge(ep.state), ep.error ? h("small", { class: "error-text block" }, ep.error.message) : null] },
          { label: "Replicas", cell: (ep) => `${ep.ready_replicas} of ${ep.replicas} ready` },
          { label: "Scale to zero", cell: scaleToZero },
          { label: "Requests", cell: (ep) => `${number(ep.usage.requests)} (${number(ep.usage.errors)} errors)` },
          { label: "Tokens in / out", cell: (ep) => `${number(ep.usage.prompt_tokens)} / ${number(ep.usage.completion_tokens)}` },
          { label: "Mean latency", cell: (ep) => (ep.usage.mean_latency_ms === null ? "—" : `${number(ep.usage.mean_latency_ms, 0)} ms`) },
          { label: "Engine", cell: (ep) => [ep.engine || "—", ep.restarts ? ` (${ep.restarts} restarts)` : ""] },
          { label: "Ready since", cell: (ep) => time(ep.ready_at) },
          {
            label: "Actions",
            cell: (ep) => {
              if (ep.state === "stopped") return "—";
              const details = h(
                "details",
                { open: openForms.has(ep.id) },
                h("summary", {}, "Settings"),
                settingsForm(ep, refresh),
              );
              details.addEventListener("toggle", () => (details.open ? openForms.add(ep.id) : openForms.delete(ep.id)));
              return h(
                "div",
                { class: "row-actions" },
                link(`#/playground?model=${encodeURIComponent(ep.model)}${ep.kind === "base" ? "" : `&base=${encodeURIComponent(ep.base_model)}`}`, "Playground"),
                actionButton(
                  "Stop",
                  async () => {
                    if (!window.confirm(`Stop the endpoint of ${ep.model}? Its engine is shut down.`)) return;
                    await api(`/v1/endpoints/${encodeURIComponent(ep.id)}`, { method: "DELETE" });
                    toast(`Stopped the endpoint of ${ep.model}.`);
                    await refresh();
                  },
                  { class: "danger", "aria-label": `Stop the endpoint of ${ep.model}` },
                ),
                details,
              );
            },
          },
        ],
      }),
    );
  }
  showStopped.addEventListener("change", refresh);
  await refresh();
  // Not while a settings form is being edited: a refresh would replace the field under the user's cursor.
  return poll(async () => {
    if (!view.querySelector(".endpoint-settings:focus-within")) await refresh();
    return true;
  }, 5);
}
