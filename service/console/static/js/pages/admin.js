// The admin key's pages: projects (create, archive) and a project's service accounts with their API keys
// (create: the key is shown once; delete). /v1/organization/projects..., as OpenAI's Administration API.

import { api, listAll } from "../api.js";
import { actionButton, badge, facts, field, h, link, pageHeader, replace, table, time, toast } from "../ui.js";

function createForm({ id, title, label, submit, onCreate }) {
  const input = h("input", { type: "text", name: "name", required: true, maxlength: "256", autocomplete: "off" });
  const button = h("button", { type: "submit" }, submit);
  const form = h("form", { class: "card inline-form", "aria-labelledby": `${id}-title` }, h("h2", { id: `${id}-title` }, title), field(label, input), button);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    try {
      await onCreate(input.value.trim());
      form.reset();
    } catch (error) {
      toast(error.message, "error");
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

async function projects(view, _params, query) {
  const showArchived = h("input", { type: "checkbox", checked: query.get("archived") === "1" });
  const results = h("div", { id: "projects-results" });
  async function refresh() {
    const rows = await listAll("/v1/organization/projects", {
      query: { limit: 100, include_archived: showArchived.checked ? "true" : undefined },
    });
    replace(
      results,
      table({
        caption: "Projects",
        rows,
        empty: "No projects yet.",
        rowAttrs: (p) => ({ "data-project-id": p.id }),
        columns: [
          { label: "Project", cell: (p) => link(`#/projects/${encodeURIComponent(p.id)}`, p.name) },
          { label: "Id", cell: (p) => p.id, class: "mono" },
          { label: "Status", cell: (p) => badge(p.status) },
          { label: "Created", cell: (p) => time(p.created_at) },
          {
            label: "Actions",
            cell: (p) =>
              p.status === "archived"
                ? "—"
                : actionButton(
                    "Archive",
                    async () => {
                      if (!window.confirm(`Archive the project ${p.name}? Its keys stop working.`)) return;
                      await api(`/v1/organization/projects/${encodeURIComponent(p.id)}`, { method: "DELETE" });
                      toast(`Archived ${p.name}.`);
                      await refresh();
                    },
                    { class: "danger", "aria-label": `Archive ${p.name}` },
                  ),
          },
        ],
      }),
    );
  }
  showArchived.addEventListener("change", refresh);
  replace(
    view,
    pageHeader("Projects"),
    createForm({
      id: "new-project",
      title: "New project",
      label: "Name",
      submit: "Create project",
      onCreate: async (name) => {
        const project = await api("/v1/organization/projects", { method: "POST", body: { name } });
        toast(`Created ${project.name}.`);
        await refresh();
      },
    }),
    h("label", { class: "checkbox" }, showArchived, " Show archived projects"),
    results,
  );
  await refresh();
}

async function project(view, [projectId]) {
  const base = `/v1/organization/projects/${encodeURIComponent(projectId)}`;
  const info = await api(base);
  const results = h("div", { id: "accounts-results" });
  const created = h("div", { "aria-live": "polite", id: "new-key" });
  async function refresh() {
    const rows = await listAll(`${base}/service_accounts`, { query: { limit: 100 } });
    replace(
      results,
      table({
        caption: "Service accounts and their API keys",
        rows,
        empty: "No service accounts: this project has no API keys.",
        columns: [
          { label: "Name", cell: (a) => a.name },
          { label: "Id", cell: (a) => a.id, class: "mono" },
          { label: "Key", cell: (a) => a.api_key?.redacted_value || "—", class: "mono" },
          { label: "Created", cell: (a) => time(a.created_at) },
          {
            label: "Actions",
            cell: (a) =>
              actionButton(
                "Delete",
                async () => {
                  if (!window.confirm(`Delete ${a.name}? Its key stops working.`)) return;
                  await api(`${base}/service_accounts/${encodeURIComponent(a.id)}`, { method: "DELETE" });
                  toast(`Deleted ${a.name}.`);
                  await refresh();
                },
                { class: "danger", "aria-label": `Delete ${a.name}` },
              ),
          },
        ],
      }),
    );
  }
  replace(
    view,
    h("p", { class: "breadcrumb" }, link("#/projects", "← All projects")),
    pageHeader(info.name),
    facts(
      [
        ["Id", h("span", { class: "mono" }, info.id)],
        ["Status", badge(info.status)],
        ["Created", time(info.created_at)],
        ["Archived", info.archived_at ? time(info.archived_at) : null],
      ],
      { class: "facts card" },
    ),
    info.status === "archived"
      ? null
      : createForm({
          id: "new-account",
          title: "New API key",
          label: "Service account name",
          submit: "Create key",
          onCreate: async (name) => {
            const account = await api(`${base}/service_accounts`, { method: "POST", body: { name } });
            const value = account.api_key?.value || "";
            const output = h("input", { type: "text", readonly: true, value, class: "mono", "aria-label": `API key of ${name}` });
            replace(
              created,
              h(
                "div",
                { class: "card notice", role: "alert" },
                h("p", {}, h("strong", {}, `The key of ${account.name}. `), "Copy it now: it is not shown again."),
                h(
                  "div",
                  { class: "copy-row" },
                  output,
                  actionButton("Copy", async () => {
                    await navigator.clipboard.writeText(value);
                    toast("Copied.");
                  }),
                ),
              ),
            );
            output.focus();
            output.select();
            await refresh();
          },
        }),
    created,
    h("h2", {}, "API keys"),
    results,
  );
  await refresh();
}

export const adminPages = { projects, project };
