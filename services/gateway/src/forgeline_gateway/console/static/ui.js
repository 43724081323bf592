// Small DOM helpers and the console's shared pieces (badges, cards, tables, error notices).
// Text from the API is always set as text, never parsed as HTML.

/**
 * Make an element: `h("a", {href: "/x", class: "link", onclick: fn}, "text", child)`.
 * Props: `class`, `text`, `dataset`, `on<event>` listeners, booleans as present/absent
 * attributes, anything else as an attribute. Children: nodes, strings, arrays, null (skipped).
 */
export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") element.className = value;
    else if (name === "text") element.textContent = value;
    else if (name === "dataset") Object.assign(element.dataset, value);
    else if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "value") element.value = value;
    else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  append(element, children);
  return element;
}

function append(parent, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(parent, child);
    else parent.append(child instanceof Node ? child : String(child));
  }
}

/** Replace the children of `element`. */
export function replace(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** An SVG element with attributes. */
export function svg(tag, attributes = {}, ...children) {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null) element.setAttribute(name, String(value));
  }
  append(element, children);
  return element;
}

// --- formatting -------------------------------------------------------------------------------

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });

/** "3 minutes ago" for a Unix time in seconds. */
export function ago(seconds) {
  if (!seconds) return "—";
  const delta = seconds - Date.now() / 1000;
  const units = [
    ["day", 86400],
    ["hour", 3600],
    ["minute", 60],
  ];
  for (const [unit, size] of units) {
    if (Math.abs(delta) >= size) return relative.format(Math.round(delta / size), unit);
  }
  return relative.format(Math.round(delta), "second");
}

/** The local date and time of a Unix time in seconds. */
export function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "—";
}

/** A time element showing "3 minutes ago", the full date on hover. */
export function timeAgo(seconds) {
  if (!seconds) return h("span", { class: "muted", text: "—" });
  return h("time", {
    datetime: new Date(seconds * 1000).toISOString(),
    title: when(seconds),
    text: ago(seconds),
  });
}

/** "1 h 4 min", "42 s". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60 ? `${s % 60} s` : ""}`.trim();
  if (s < 172800) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

/** "1.2 MB". */
export function bytes(count) {
  if (count === null || count === undefined) return "—";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let value = count;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${unit ? value.toFixed(value < 10 ? 1 : 0) : value} ${units[unit]}`;
}

/** A number for a metric: 4 significant digits, exponent form for the very small. */
export function metric(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  if (value === 0) return "0";
  const magnitude = Math.abs(value);
  if (magnitude < 1e-3 || magnitude >= 1e6) return value.toExponential(2);
  return Number(value.toPrecision(4)).toString();
}

// --- pieces -----------------------------------------------------------------------------------

const STATUS_TONES = {
  succeeded: "ok",
  ready: "ok",
  processed: "ok",
  running: "active",
  validating_files: "active",
  queued: "pending",
  failed: "bad",
  cancelled: "muted",
};

/** A coloured status pill. */
export function badge(status, label = status) {
  const tone = STATUS_TONES[status] || "muted";
  return h("span", { class: `badge badge-${tone}`, dataset: { status } }, label.replace(/_/g, " "));
}

/** A section card with a title row (and optional actions on the right). */
export function card(title, { actions = null, class: extra = "" } = {}, ...body) {
  return h(
    "section",
    { class: `card ${extra}`.trim() },
    title || actions
      ? h("div", { class: "card-head" }, title ? h("h2", { text: title }) : null, actions)
      : null,
    h("div", { class: "card-body" }, ...body),
  );
}

/** The page's title row. */
export function pageHeader(title, subtitle = null, actions = null) {
  return h(
    "div",
    { class: "page-head" },
    h("div", { class: "page-title" }, h("h1", {}, title), subtitle ? h("p", { class: "subtitle" }, subtitle) : null),
    actions ? h("div", { class: "page-actions" }, actions) : null,
  );
}

/**
 * A table: `columns` are `{label, cell(row) -> node|string, class}`; an empty list shows `empty`.
 */
export function table(columns, rows, { empty = "Nothing here yet.", rowClass = null } = {}) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: "table" },
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.class, scope: "col" }, c.label)))),
      h(
        "tbody",
        {},
        rows.map((row) =>
          h(
            "tr",
            { class: rowClass ? rowClass(row) : null },
            columns.map((c) => h("td", { class: c.class, "data-label": c.label }, c.cell(row))),
          ),
        ),
      ),
    ),
  );
}

/** Label/value pairs. */
export function facts(pairs) {
  return h(
    "dl",
    { class: "facts" },
    pairs
      .filter(([, value]) => value !== undefined)
      .map(([label, value]) =>
        h("div", { class: "fact" }, h("dt", { text: label }), h("dd", {}, value ?? "—")),
      ),
  );
}

/** What went wrong, in words: a 401, a 403 (a key without the admin scope), or the API's message. */
export function describe(error) {
  if (!error) return "";
  if (error.status === 401) {
    return `The gateway needs a valid API key (401): ${error.message}`;
  }
  if (error.status === 403) return `Not allowed with this API key (403): ${error.message}`;
  if (error.status === 0) return error.message;
  return error.status ? `${error.message} (${error.status})` : error.message || String(error);
}

/** An error notice for a failed call (role=alert, so it is read out). */
export function errorNotice(error, { title = null } = {}) {
  const kind = error && (error.status === 401 || error.status === 403) ? "auth" : "error";
  return h(
    "div",
    { class: `alert alert-${kind === "auth" ? "warn" : "error"}`, role: "alert", dataset: { status: String(error?.status ?? "") } },
    title ? h("strong", { text: title }) : null,
    h("span", { class: "alert-text", text: describe(error) }),
    kind === "auth"
      ? h("button", {
          type: "button",
          class: "linkish",
          text: "Use another API key",
          onclick: () => window.dispatchEvent(new CustomEvent("forgeline:ask-key")),
        })
      : null,
  );
}

/** A success notice (role=status, so it is read out when the reader is idle). */
function okNotice(text) {
  return h("div", { class: "alert alert-ok", role: "status" }, h("span", { class: "alert-text", text }));
}

/**
 * Checks a form before it is sent: clears `slot` and the marks of the last check, then marks each
 * control of `missing` (`[control, message]` pairs) invalid, says their messages in `slot` and
 * focuses the first. Whether anything was missing (then the form is not sent).
 */
export function flagMissing(form, slot, missing) {
  replace(slot);
  for (const control of form.querySelectorAll("[aria-invalid]")) control.removeAttribute("aria-invalid");
  if (!missing.length) return false;
  for (const [control] of missing) control.setAttribute("aria-invalid", "true");
  replace(slot, h("div", { class: "alert alert-error", role: "alert" }, h("span", { class: "alert-text", text: missing.map(([, m]) => m).join(" ") })));
  missing[0][0].focus();
  return true;
}

/**
 * A destructive action taken only once confirmed (undeploying, revoking a key), as the Deployments
 * and API keys pages ask it. `ask(target)` makes `target` the `pending` one and has the page
 * `draw()` its question into `slot` (built with `dialog`, whose Yes button is `#${id}` and takes
 * the focus); `run(act, failTitle)` runs `act()`, `busy` meanwhile, and says in `notices` the
 * words it resolved to, or its error under `failTitle`; then, unless the page was left, the page
 * draws again and `settled()` (its list, a refresh).
 */
export function confirmation({ slot, notices, id, draw, settled }) {
  const flow = {
    pending: null,
    busy: false,
    ask(target) {
      flow.pending = target;
      replace(notices);
      draw();
      slot.querySelector(`#${id}`)?.focus();
    },
    cancel() {
      flow.pending = null;
      draw();
    },
    dialog({ label, text, yes, working, onYes }) {
      return h(
        "div",
        { class: "alert alert-warn confirm", role: "alertdialog", "aria-label": label },
        h("span", { class: "alert-text", text }),
        h(
          "span",
          { class: "confirm-actions" },
          h("button", { type: "button", class: "button danger", id, text: flow.busy ? working : yes, disabled: flow.busy, onclick: onYes }),
          h("button", { type: "button", class: "button ghost", text: "Keep it", disabled: flow.busy, onclick: () => flow.cancel() }),
        ),
      );
    },
    async run(act, failTitle) {
      flow.busy = true;
      draw();
      replace(notices);
      try {
        replace(notices, okNotice(await act()));
      } catch (error) {
        if (error.name === "AbortError") return;
        replace(notices, errorNotice(error, { title: failTitle }));
      } finally {
        flow.busy = false;
        flow.pending = null;
      }
      draw();
      settled();
    },
  };
  return flow;
}

/** A button that copies `text()` to the clipboard. */
export function copyButton(text, label = "Copy") {
  const button = h("button", { type: "button", class: "button small ghost", text: label });
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(typeof text === "function" ? text() : text);
      button.textContent = "Copied";
    } catch {
      button.textContent = "Select and copy";
    }
    setTimeout(() => (button.textContent = label), 1500);
  });
  return button;
}

/** An internal link (handled by the router). */
export function link(href, text, props = {}) {
  return h("a", { href, ...props }, text);
}

/** A model name in monospace, shortened in the middle if long (full name on hover). */
export function mono(text, { max = 0 } = {}) {
  const value = String(text ?? "—");
  const shown = max && value.length > max ? `${value.slice(0, max - 10)}…${value.slice(-9)}` : value;
  return h("code", { class: "mono", title: value, text: shown });
}
