// The console's shell: routes a path under /console/ to its page, keeps the API key of this tab,
// and asks for one when the gateway answers 401.

import { api, keyStore } from "./api.js";
import datasets from "./pages/datasets.js";
import deployments from "./pages/deployments.js";
import job from "./pages/job.js";
import jobs from "./pages/jobs.js";
import keys from "./pages/keys.js";
import newJob from "./pages/new_job.js";
import overview from "./pages/overview.js";
import playground from "./pages/playground.js";
import registry from "./pages/registry.js";
import { describe, errorNotice, h, replace } from "./ui.js";

const BASE = "/console";
const ROUTES = [
  [/^\/?$/, overview],
  [/^\/jobs\/?$/, jobs],
  [/^\/jobs\/new\/?$/, newJob],
  [/^\/jobs\/([^/]+)\/?$/, job],
  [/^\/datasets\/?$/, datasets],
  [/^\/deployments\/?$/, deployments],
  [/^\/playground\/?$/, playground],
  [/^\/keys\/?$/, keys],
  [/^\/registry\/?$/, registry],
];

const main = document.getElementById("main");
const keyStatus = document.getElementById("key-status");
const dialog = document.getElementById("key-dialog");
const keyForm = document.getElementById("key-form");
const keyInput = document.getElementById("key-input");
const keyError = document.getElementById("key-error");

/** How this tab reaches the API: "open" (no key needed), "key", or "unreachable". */
const access = { mode: "unknown", error: null };
let current = null; // the page on screen: {controller}
let keyWaiters = [];
let verifying = false;

// --- routing ----------------------------------------------------------------------------------

function route(pathname) {
  const path = pathname.startsWith(BASE) ? pathname.slice(BASE.length) : pathname;
  for (const [pattern, page] of ROUTES) {
    const match = pattern.exec(path);
    if (match) return { page, params: match.slice(1).map(decodeURIComponent) };
  }
  return null;
}

export function navigate(path, { replace: replaceState = false } = {}) {
  if (replaceState) history.replaceState(null, "", path);
  else history.pushState(null, "", path);
  render();
}

function render() {
  current?.controller.abort();
  const controller = new AbortController();
  current = { controller };
  const found = route(location.pathname);
  window.scrollTo(0, 0);
  if (!found) {
    document.title = "Not found · Forgeline Console";
    highlight(null);
    replace(
      main,
      h("div", { class: "page-head" }, h("h1", { text: "Page not found" })),
      h("p", {}, "There is no console page at this address. ", h("a", { href: `${BASE}/` }, "Go to the overview"), "."),
    );
    return;
  }
  const { page, params } = found;
  document.title = `${page.title} · Forgeline Console`;
  highlight(page.nav);
  const root = h("div", { class: `page page-${page.nav}` });
  replace(main, root);
  const context = {
    root,
    params,
    query: new URLSearchParams(location.search),
    signal: controller.signal,
    access,
    navigate,
    poll: poller(controller.signal),
  };
  try {
    const done = page.render(context);
    if (done && typeof done.catch === "function") done.catch((error) => pageFailed(root, error));
  } catch (error) {
    pageFailed(root, error);
  }
}

function pageFailed(root, error) {
  if (error?.name === "AbortError") return;
  console.error(error);
  root.append(errorNotice(error, { title: "This page failed to load." }));
}

function highlight(nav) {
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

/**
 * Run `task` now and again `ms` after each run ends, until the page is left; while the tab is
 * hidden the next run waits for it to be shown. Returns `{now()}` to run it at once.
 */
function poller(signal) {
  return (task, ms) => {
    let timer = null;
    let running = false;
    let again = false;
    const run = async () => {
      if (signal.aborted) return;
      if (running) {
        again = true;
        return;
      }
      clearTimeout(timer);
      running = true;
      try {
        await task();
      } catch (error) {
        if (error?.name !== "AbortError") console.error(error);
      } finally {
        running = false;
      }
      if (signal.aborted) return;
      if (again) {
        again = false;
        run();
      } else {
        timer = setTimeout(whenVisible, ms);
      }
    };
    const whenVisible = () => {
      if (!document.hidden) return run();
      document.addEventListener("visibilitychange", run, { once: true, signal });
    };
    signal.addEventListener("abort", () => clearTimeout(timer));
    run();
    return { now: run };
  };
}

document.addEventListener("click", (event) => {
  if (event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const anchor = event.target.closest("a[href]");
  if (!anchor || anchor.target || anchor.hasAttribute("download")) return;
  const url = new URL(anchor.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith(`${BASE}/`)) return;
  event.preventDefault();
  if (url.pathname + url.search !== location.pathname + location.search) {
    navigate(url.pathname + url.search);
  }
});
window.addEventListener("popstate", render);

// --- the API key ------------------------------------------------------------------------------

function showKeyStatus() {
  const key = keyStore.get();
  if (access.mode === "open") {
    replace(
      keyStatus,
      h("span", { class: "dot dot-ok" }),
      h("span", {}, h("strong", { text: "Local gateway" }), h("br"), h("span", { class: "muted", text: "no API key needed" })),
    );
  } else if (access.mode === "key" && key) {
    replace(
      keyStatus,
      h("span", { class: "dot dot-ok" }),
      h(
        "span",
        {},
        h("strong", { text: "API key " }),
        h("code", { class: "mono", text: `${key.slice(0, 8)}…` }),
        h("br"),
        h("button", { type: "button", class: "linkish", text: "Change", onclick: () => askForKey() }),
        " · ",
        h("button", {
          type: "button",
          class: "linkish",
          text: "Forget",
          onclick: () => {
            keyStore.clear();
            access.mode = "unknown";
            askForKey();
          },
        }),
      ),
    );
  } else if (access.mode === "unreachable") {
    replace(keyStatus, h("span", { class: "dot dot-bad" }), h("span", { text: "Gateway unreachable" }));
  } else {
    replace(keyStatus, h("span", { class: "dot" }), h("span", { class: "muted", text: "Not signed in" }));
  }
}

/**
 * Open the key dialog, with `message` as an error if one is given (an open dialog keeps the one
 * it shows otherwise); resolves once a key is accepted.
 */
function askForKey(message = null) {
  if (message || !dialog.open) {
    keyError.hidden = !message;
    keyError.textContent = message || "";
  }
  if (!dialog.open) {
    keyInput.value = "";
    dialog.showModal();
    keyInput.focus();
  }
  return new Promise((resolve) => keyWaiters.push(resolve));
}

keyForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = keyInput.value.trim();
  if (!key) return;
  const submit = document.getElementById("key-submit");
  submit.disabled = true;
  keyStore.set(key);
  verifying = true;
  try {
    await api.get("/v1/models");
    accepted();
  } catch (error) {
    if (error.status === 403) {
      accepted(); // a valid key without the inference scope: admin pages still work
    } else {
      if (error.status === 401) keyStore.clear();
      keyError.textContent =
        error.status === 401 ? `This key was not accepted (401): ${error.message}` : describe(error);
      keyError.hidden = false;
      keyInput.select();
    }
  } finally {
    verifying = false;
    submit.disabled = false;
  }
});

function accepted() {
  access.mode = "key";
  dialog.close();
  showKeyStatus();
  const waiters = keyWaiters;
  keyWaiters = [];
  for (const resolve of waiters) resolve();
  render();
}

window.addEventListener("forgeline:unauthorized", (event) => {
  if (verifying) return;
  const hadKey = Boolean(keyStore.get());
  access.mode = "unknown";
  showKeyStatus();
  askForKey(hadKey ? `The gateway no longer accepts this key (401): ${event.detail.message}` : null);
});

window.addEventListener("forgeline:ask-key", () => askForKey());

async function probe() {
  try {
    await api.get("/v1/models");
    access.mode = keyStore.get() ? "key" : "open";
  } catch (error) {
    if (error.status === 403) access.mode = "key";
    else if (error.status === 401) access.mode = "unknown"; // the dialog is open (unauthorized event)
    else {
      access.mode = "unreachable";
      access.error = error;
    }
  }
  showKeyStatus();
}

await probe();
render();
