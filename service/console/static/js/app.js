// The console's shell: sign-in, navigation and the hash router (#/jobs, #/jobs/<id>, ...). Each page module
// exports render(main, params) and may return a cleanup function (to stop its polling) when the user leaves.

import { ApiError, session, whoIs } from "./api.js";
import { adminPages } from "./pages/admin.js";
import { endpointsPage, modelsPage } from "./pages/models.js";
import { filePage, filesPage } from "./pages/files.js";
import { jobPage } from "./pages/job.js";
import { jobsPage } from "./pages/jobs.js";
import { playgroundPage } from "./pages/playground.js";
import { errorBox, field, h, replace } from "./ui.js";

const PROJECT_NAV = [
  ["#/jobs", "Jobs"],
  ["#/files", "Files"],
  ["#/models", "Models"],
  ["#/endpoints", "Endpoints"],
  ["#/playground", "Playground"],
];
const ADMIN_NAV = [["#/projects", "Projects"]];

// [pattern, page, role]: the first match wins; groups are the page's params.
const ROUTES = [
  [/^#\/jobs\/([^/?]+)$/, jobPage, "project"],
  [/^#\/jobs$/, jobsPage, "project"],
  [/^#\/files\/([^/?]+)$/, filePage, "project"],
  [/^#\/files$/, filesPage, "project"],
  [/^#\/models$/, modelsPage, "project"],
  [/^#\/endpoints$/, endpointsPage, "project"],
  [/^#\/playground$/, playgroundPage, "project"],
  [/^#\/projects\/([^/?]+)$/, adminPages.project, "admin"],
  [/^#\/projects$/, adminPages.projects, "admin"],
];

const main = document.getElementById("main");
let cleanup = null;
let generation = 0; // which route() is current: a page that finishes rendering after the user moved on is dropped

/** Shows `hash`: through hashchange when it changes, at once when it is already the address. */
function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function splitHash() {
  const hash = location.hash || "#/";
  const [path, query = ""] = hash.split("?");
  return { path, query: new URLSearchParams(query) };
}

function renderNav() {
  const role = session.role;
  const nav = document.getElementById("nav");
  const toggle = document.getElementById("menu-toggle");
  const who = document.getElementById("who");
  const signedIn = Boolean(session.key);
  nav.hidden = !signedIn;
  toggle.hidden = !signedIn;
  who.hidden = !signedIn;
  if (!signedIn) return;
  document.getElementById("who-label").textContent = role === "admin" ? "Admin key" : "Project key";
  const { path } = splitHash();
  const items = (role === "admin" ? ADMIN_NAV : PROJECT_NAV).map(([href, label]) => {
    const current = path === href || path.startsWith(`${href}/`);
    return h("li", {}, h("a", { href, "aria-current": current ? "page" : null }, label));
  });
  replace(document.getElementById("nav-list"), items);
}

function signInPage() {
  const input = h("input", {
    type: "password",
    name: "api_key",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    placeholder: "sk-…",
  });
  const status = h("div", { "aria-live": "polite" });
  const button = h("button", { type: "submit" }, "Sign in");
  const form = h(
    "form",
    { class: "card sign-in", "aria-labelledby": "page-title" },
    h("h1", { id: "page-title", tabindex: "-1" }, "Sign in to Hone"),
    h(
      "p",
      { class: "muted" },
      "A project's API key shows its jobs, files, models and endpoints; the admin key shows projects and their keys. " +
        "The key stays in this tab only (sessionStorage) and is sent to this server's API as a Bearer token.",
    ),
    field("API key", input),
    button,
    status,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    button.disabled = true;
    replace(status, h("p", { class: "muted" }, "Checking the key…"));
    try {
      const role = await whoIs(key);
      session.save(key, role);
      replace(status);
      const { path } = splitHash();
      go(role === "admin" ? "#/projects" : path.startsWith("#/") && path.length > 2 ? location.hash : "#/jobs");
    } catch (error) {
      const message =
        error instanceof ApiError && error.status === 401 ? "That key is not valid for this server." : error.message;
      replace(status, errorBox({ message }));
      input.focus();
    } finally {
      button.disabled = false;
    }
  });
  replace(main, form);
  input.focus();
}

function notFound() {
  replace(main, h("h1", { tabindex: "-1", id: "page-title" }, "Not found"), h("p", {}, h("a", { href: "#/" }, "Home")));
}

async function route() {
  const mine = ++generation;
  if (cleanup) {
    try {
      cleanup();
    } catch (error) {
      console.warn(error);
    }
    cleanup = null;
  }
  closeMenu();
  renderNav();
  if (!session.key) {
    signInPage();
    return;
  }
  const { path, query } = splitHash();
  if (path === "#/" || path === "#") {
    location.replace(session.role === "admin" ? "#/projects" : "#/jobs");
    return;
  }
  const found = ROUTES.find(([pattern]) => pattern.test(path));
  if (!found || found[2] !== session.role) {
    notFound();
    return;
  }
  const [pattern, page] = found;
  const params = path.match(pattern).slice(1).map(decodeURIComponent);
  replace(main, h("p", { class: "muted" }, "Loading…"));
  try {
    // The page builds in a detached view, shown only if it is still the page asked for when it is ready.
    const view = h("div", { class: "view" });
    const done = (await page(view, params, query)) || null;
    if (mine !== generation) {
      done?.();
      return;
    }
    cleanup = done;
    replace(main, view);
    for (const chart of view.querySelectorAll(".chart")) chart.mount?.(); // canvases size themselves once shown
  } catch (error) {
    if (mine !== generation) return;
    if (error instanceof ApiError && error.status === 401) {
      session.clear();
      route();
      return;
    }
    replace(main, h("h1", { tabindex: "-1", id: "page-title" }, "Something went wrong"), errorBox(error));
  }
  // Move focus to the new page's heading, so keyboard and screen reader users start there (as a page load would).
  const title = document.getElementById("page-title");
  if (title && document.activeElement?.tagName !== "INPUT") title.focus({ preventScroll: false });
  document.title = `${title ? title.textContent : "Hone"} · Hone console`;
}

function closeMenu() {
  const toggle = document.getElementById("menu-toggle");
  toggle.setAttribute("aria-expanded", "false");
  document.body.classList.remove("menu-open");
}

document.getElementById("menu-toggle").addEventListener("click", (event) => {
  const open = event.currentTarget.getAttribute("aria-expanded") !== "true";
  event.currentTarget.setAttribute("aria-expanded", String(open));
  document.body.classList.toggle("menu-open", open);
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && document.body.classList.contains("menu-open")) {
    closeMenu();
    document.getElementById("menu-toggle").focus();
  }
});
document.getElementById("sign-out").addEventListener("click", () => {
  session.clear();
  history.replaceState(null, "", "#/"); // no hashchange: the sign-in form is shown now, not a beat later
  route();
});
document.getElementById("skip").addEventListener("click", (event) => {
  event.preventDefault(); // the hash is the router's: focus the content instead of navigating to #main
  main.focus();
});
window.addEventListener("hashchange", route);
route();
