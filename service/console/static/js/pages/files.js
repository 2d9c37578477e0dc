// Files: the project's uploads (with an upload form), and a file's validation report: the format found, the
// examples counted, and each bad line with its number and what is wrong with it (the file's `dataset` summary).

import { api, listAll } from "../api.js";
import { actionButton, badge, bytes, facts, field, h, link, number, pageHeader, poll, replace, table, time, toast } from "../ui.js";

function validation(file) {
  const ds = file.dataset;
  if (!ds) return file.purpose === "fine-tune" ? "—" : "not checked";
  if (ds.total_errors) return `${number(ds.total_errors)} bad line${ds.total_errors === 1 ? "" : "s"}`;
  return ds.examples === null || ds.examples === undefined ? "—" : `${number(ds.examples)} examples`;
}

function uploadForm(onDone) {
  const input = h("input", { type: "file", name: "file", accept: ".jsonl,.json,.txt", required: true });
  const purpose = h(
    "select",
    { name: "purpose" },
    ["fine-tune", "evals", "batch", "user_data"].map((p) => h("option", { value: p }, p)),
  );
  const button = h("button", { type: "submit" }, "Upload");
  const form = h(
    "form",
    { class: "card inline-form", "aria-labelledby": "upload-title" },
    h("h2", { id: "upload-title" }, "Upload a file"),
    field("JSONL file", input),
    field("Purpose", purpose),
    button,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!input.files.length) return;
    const body = new FormData();
    body.append("purpose", purpose.value);
    body.append("file", input.files[0]);
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    try {
      const file = await api("/v1/files", { method: "POST", body });
      toast(`Uploaded ${file.filename}: ${file.status}.`);
      form.reset();
      onDone(file);
    } catch (error) {
      toast(error.message, "error");
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  });
  return form;
}

export async function filesPage(view) {
  const results = h("div", { id: "files-results" });
  let files = [];
  async function refresh() {
    files = await listAll("/v1/files", { query: { limit: 1000 }, max: 5000 });
    replace(
      results,
      table({
        caption: "Files, newest first",
        empty: "No files yet.",
        rows: files,
        rowAttrs: (f) => ({ "data-file-id": f.id }),
        columns: [
          { label: "File", cell: (f) => link(`#/files/${encodeURIComponent(f.id)}`, f.filename) },
          { label: "Id", cell: (f) => f.id, class: "mono" },
          { label: "Purpose", cell: (f) => f.purpose },
          { label: "Size", cell: (f) => bytes(f.bytes) },
          { label: "Status", cell: (f) => badge(f.status) },
          { label: "Validation", cell: validation },
          { label: "Uploaded", cell: (f) => time(f.created_at) },
        ],
      }),
    );
  }
  replace(view, pageHeader("Files"), uploadForm(() => refresh()), results);
  await refresh();
  return poll(async () => {
    if (files.some((f) => f.status === "uploaded")) await refresh(); // validation still running
    return true;
  }, 3);
}

export async function filePage(view, [fileId]) {
  const path = `/v1/files/${encodeURIComponent(fileId)}`;
  const body = h("div", {});
  replace(view, h("p", { class: "breadcrumb" }, link("#/files", "← All files")), body);

  async function render() {
    const file = await api(path);
    const ds = file.dataset;
    const errors = ds?.errors || [];
    replace(
      body,
      pageHeader(
        file.filename,
        actionButton(
          "Delete",
          async () => {
            if (!window.confirm(`Delete ${file.filename} (${file.id})?`)) return;
            await api(path, { method: "DELETE" });
            toast(`Deleted ${file.filename}.`);
            location.hash = "#/files";
          },
          { class: "danger" },
        ),
      ),
      facts(
        [
          ["Id", h("span", { class: "mono" }, file.id)],
          ["Status", badge(file.status)],
          ["Purpose", file.purpose],
          ["Size", bytes(file.bytes)],
          ["Uploaded", time(file.created_at)],
          ["Expires", file.expires_at ? time(file.expires_at) : null],
          ["Details", file.status_details],
        ],
        { class: "facts card" },
      ),
      h(
        "section",
        { class: "card", "aria-labelledby": "report-title", id: "validation-report" },
        h("h2", { id: "report-title" }, "Validation report"),
        ds
          ? [
              facts([
                ["Format", ds.format || "—"],
                ["Examples", number(ds.examples)],
                ["Bad lines", number(ds.total_errors || 0)],
                ["Images", ds.images ? `${number(ds.images)} in ${number(ds.image_examples)} examples` : null],
              ]),
              errors.length
                ? [
                    ds.total_errors > errors.length
                      ? h("p", { class: "muted" }, `The first ${errors.length} of ${ds.total_errors} bad lines:`)
                      : null,
                    table({
                      caption: "Bad lines",
                      rows: errors,
                      rowAttrs: (e) => ({ "data-line": e.line ?? "" }),
                      columns: [
                        { label: "Line", cell: (e) => (e.line === null || e.line === undefined ? "—" : String(e.line)) },
                        { label: "Field", cell: (e) => e.field || "—", class: "mono" },
                        { label: "Problem", cell: (e) => e.message || "—" },
                      ],
                    }),
                  ]
                : h("p", { class: "ok-text" }, file.status === "uploaded" ? "Validating…" : "Every line is valid."),
            ]
          : h("p", { class: "muted" }, "Hone validates files uploaded for fine-tuning; this one was not checked."),
      ),
    );
    return file.status === "uploaded";
  }
  const again = await render();
  return again ? poll(render, 2) : null;
}
