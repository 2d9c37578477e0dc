// Small DOM helpers. Pages build elements with h(), never from HTML strings: every name, message and model
// answer the API returns is text, so nothing it holds can become markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/**
 * Replaces el's children. Pages refresh by rebuilding what they show; when the keyboard focus was inside, it moves
 * to the rebuilt control that is the same one (same id, or same kind, link and name), so a refresh every few
 * seconds never throws a keyboard or screen reader user back to the top of the page.
 */
export function replace(el, ...children) {
  const focused = document.activeElement;
  const key = focused && focused !== el && el.contains(focused) ? focusKey(focused) : null;
  el.replaceChildren();
  append(el, children);
  if (key) {
    const same = [...el.querySelectorAll(key.tag)].find((candidate) => focusKey(candidate).id === key.id);
    same?.focus({ preventScroll: true });
  }
  return el;
}

function focusKey(node) {
  const tag = node.tagName.toLowerCase();
  const name = node.getAttribute("aria-label") || node.textContent.trim();
  return { tag, id: node.id || `${tag}|${node.getAttribute("href") || ""}|${node.getAttribute("name") || ""}|${name}` };
}

export function time(seconds) {
  if (!seconds) return "—";
  const date = new Date(seconds * 1000);
  return h("time", { datetime: date.toISOString(), title: date.toISOString() }, date.toLocaleString());
}

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

export function number(n, digits = 4) {
  if (n === null || n === undefined) return "—";
  return Number.isInteger(n) ? n.toLocaleString() : Number(n).toFixed(digits);
}

/** A status as a word with a colour: the word carries the meaning, the colour only repeats it. */
export function badge(status) {
  return h("span", { class: `badge badge-${String(status).replace(/[^a-z_]/g, "")}` }, String(status).replace(/_/g, " "));
}

/**
 * A table that is a table on a wide screen and a list of cards on a phone (console.css): each cell carries its
 * column's name in data-label. columns: [{label, cell: (row) => node|text, class?}]
 */
export function table({ caption, columns, rows, empty = "Nothing here yet.", rowAttrs }) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: "responsive" },
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c.label)))),
      h(
        "tbody",
        {},
        rows.map((row) =>
          h(
            "tr",
            rowAttrs ? rowAttrs(row) : {},
            columns.map((c) => h("td", { "data-label": c.label, class: c.class }, c.cell(row))),
          ),
        ),
      ),
    ),
  );
}

/** A definition list of [term, value] pairs, skipping empty values. */
export function facts(pairs, attrs = {}) {
  return h(
    "dl",
    { class: "facts", ...attrs },
    pairs
      .filter(([, value]) => value !== undefined && value !== null && value !== "")
      .map(([term, value]) => h("div", {}, h("dt", {}, term), h("dd", {}, value))),
  );
}

export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  const item = h("p", { class: `toast toast-${kind}` }, message);
  box.append(item);
  setTimeout(() => item.remove(), 6000);
}

/** An inline error for a failed call: role=alert, so a screen reader says it at once. */
export function errorBox(error) {
  return h("p", { class: "error", role: "alert" }, error?.message || String(error));
}

export function pageHeader(title, ...actions) {
  return h(
    "div",
    { class: "page-header" },
    h("h1", { tabindex: "-1", id: "page-title" }, title),
    actions.length ? h("div", { class: "actions" }, actions) : null,
  );
}

/**
 * Calls `step` every `seconds` while the page is shown; `step` returns false to stop. Skips a beat while
 * the tab is hidden, and never runs two steps at once. Returns the function that stops it (the page's cleanup).
 */
export function poll(step, seconds) {
  let timer = null;
  let stopped = false;
  const run = async () => {
    timer = null;
    if (stopped) return;
    let again = true;
    if (!document.hidden) {
      try {
        again = (await step()) !== false;
      } catch (error) {
        console.warn("poll", error);
      }
    }
    if (again && !stopped) timer = setTimeout(run, seconds * 1000);
  };
  timer = setTimeout(run, seconds * 1000); // the page has just loaded what it shows: the first beat waits
  return () => {
    stopped = true;
    if (timer) clearTimeout(timer);
  };
}

/** A button that runs an async action once at a time, busy while it runs, and reports a failure as a toast. */
export function actionButton(label, action, attrs = {}) {
  const button = h("button", { type: "button", ...attrs }, label);
  button.addEventListener("click", async () => {
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    try {
      await action(button);
    } catch (error) {
      toast(error.message || String(error), "error");
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  });
  return button;
}

export function link(href, text, attrs = {}) {
  return h("a", { href, ...attrs }, text);
}

export function field(label, control, hint) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  control.id = id;
  const hintId = hint ? `${id}-hint` : null;
  if (hintId) control.setAttribute("aria-describedby", hintId);
  return h(
    "div",
    { class: "field" },
    h("label", { for: id }, label),
    control,
    hint ? h("small", { id: hintId, class: "hint" }, hint) : null,
  );
}
