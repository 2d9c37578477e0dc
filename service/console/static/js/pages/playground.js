// Playground: one prompt to a tuned model and to its base, side by side, both streamed (POST /v1/chat/completions
// with stream: true, read as server-sent events). The base is the job's `model` when the page is opened from a job;
// otherwise whatever the job list or the model's endpoint says it was tuned from.

import { ApiError, api, listAll, streamChat } from "../api.js";
import { actionButton, field, h, pageHeader, replace, toast } from "../ui.js";

const NOT_SERVING = new Set(["model_not_deployed", "endpoint_failed"]);

function pane(id, role) {
  const title = h("h2", { id: `${id}-title` });
  const answer = h("div", { class: "answer", id: `${id}-answer`, "aria-labelledby": `${id}-title` });
  const status = h("p", { class: "pane-status muted", id: `${id}-status`, "aria-live": "polite" });
  const extra = h("div", {});
  const el = h("section", { class: "pane card", id, "aria-labelledby": `${id}-title`, "aria-busy": "false" }, title, answer, status, extra);
  return {
    el,
    setModel(model) {
      replace(title, `${role}: `, h("span", { class: "mono" }, model || "—"));
    },
    reset() {
      replace(answer);
      replace(status);
      replace(extra);
      el.dataset.state = "idle";
    },
    answer,
    status,
    extra,
  };
}

export async function playgroundPage(view, _params, query) {
  const [models, jobs, endpoints] = await Promise.all([
    api("/v1/models"),
    listAll("/v1/fine_tuning/jobs", { query: { limit: 100 }, max: 500 }),
    listAll("/v1/endpoints", { query: { limit: 100 }, max: 1000 }),
  ]);
  const baseOf = new Map();
  for (const ep of endpoints) if (ep.kind !== "base") baseOf.set(ep.model, ep.base_model);
  for (const j of jobs) if (j.fine_tuned_model) baseOf.set(j.fine_tuned_model, j.model);
  const ids = models.data.map((m) => m.id);
  const tunedIds = models.data.filter((m) => m.owned_by !== "hone").map((m) => m.id);
  const baseIds = models.data.filter((m) => m.owned_by === "hone").map((m) => m.id);

  const options = (list, chosen) => {
    const all = chosen && !list.includes(chosen) ? [chosen, ...list] : list;
    return all.map((id) => h("option", { value: id, selected: id === chosen }, id));
  };
  const wantedModel = query.get("model") || tunedIds[0] || ids[0] || "";
  const tunedSelect = h("select", { name: "model", id: "pg-model" }, options([...tunedIds, ...baseIds], wantedModel));
  const baseSelect = h(
    "select",
    { name: "base", id: "pg-base" },
    options(baseIds, query.get("base") || baseOf.get(wantedModel) || baseIds[0] || ""),
  );
  tunedSelect.addEventListener("change", () => {
    const base = baseOf.get(tunedSelect.value);
    if (base) replace(baseSelect, options(baseIds, base));
    left.setModel(tunedSelect.value);
  });
  baseSelect.addEventListener("change", () => right.setModel(baseSelect.value));

  const system = h("textarea", { name: "system", rows: "2", id: "pg-system", placeholder: "Optional" });
  const prompt = h("textarea", { name: "prompt", rows: "4", id: "pg-prompt", required: true });
  const maxTokens = h("input", { type: "number", min: "1", max: "4096", value: "64", id: "pg-max-tokens", inputmode: "numeric" });
  const temperature = h("input", { type: "number", min: "0", max: "2", step: "0.1", value: "0", id: "pg-temperature", inputmode: "decimal" });
  const send = h("button", { type: "submit", id: "pg-send" }, "Send to both");
  const stop = h("button", { type: "button", class: "secondary", id: "pg-stop", disabled: true }, "Stop");
  const left = pane("pane-tuned", "Tuned");
  const right = pane("pane-base", "Base");
  left.setModel(tunedSelect.value);
  right.setModel(baseSelect.value);

  const form = h(
    "form",
    { class: "card playground-form", "aria-label": "Ask both models" },
    h("div", { class: "grid-2" }, field("Tuned model", tunedSelect), field("Base model", baseSelect)),
    field("System message", system),
    field("Prompt", prompt, "Ctrl+Enter sends"),
    h("div", { class: "grid-2" }, field("Max tokens", maxTokens), field("Temperature", temperature)),
    h("div", { class: "actions" }, send, stop),
  );
  replace(view, pageHeader("Playground"), form, h("div", { class: "panes" }, left.el, right.el));

  let controller = null;

  async function run(target, model, messages) {
    target.reset();
    target.setModel(model);
    target.el.setAttribute("aria-busy", "true");
    target.el.dataset.state = "streaming";
    replace(target.status, "Streaming…");
    const started = performance.now();
    try {
      const result = await streamChat(
        {
          model,
          messages,
          max_tokens: Number(maxTokens.value) || 64,
          temperature: Number(temperature.value),
        },
        {
          signal: controller.signal,
          onDelta: (piece) => target.answer.append(piece),
        },
      );
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      const tokens = result.usage ? `${result.usage.completion_tokens} tokens, ` : "";
      replace(target.status, `Done (${result.finishReason || "end"}): ${tokens}${seconds} s.`);
      target.el.dataset.state = "done";
    } catch (error) {
      target.el.dataset.state = "error";
      if (error.name === "AbortError") {
        replace(target.status, "Stopped.");
        return;
      }
      replace(target.status, h("span", { class: "error-text", role: "alert" }, error.message));
      if (error instanceof ApiError && (NOT_SERVING.has(error.code) || error.status === 404)) {
        replace(
          target.extra,
          actionButton(`Deploy ${model}`, async () => {
            const ep = await api("/v1/endpoints", { method: "POST", body: { model } });
            toast(`Deploying ${model} (${ep.id}); send again when it is ready.`);
          }),
        );
      }
    } finally {
      target.el.setAttribute("aria-busy", "false");
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = prompt.value.trim();
    if (!text) {
      prompt.focus();
      return;
    }
    const messages = [];
    if (system.value.trim()) messages.push({ role: "system", content: system.value.trim() });
    messages.push({ role: "user", content: text });
    controller = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    try {
      await Promise.all([run(left, tunedSelect.value, messages), run(right, baseSelect.value, messages)]);
    } finally {
      send.disabled = false;
      stop.disabled = true;
      controller = null;
    }
  });
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
  });
  stop.addEventListener("click", () => controller?.abort());
  return () => controller?.abort();
}
