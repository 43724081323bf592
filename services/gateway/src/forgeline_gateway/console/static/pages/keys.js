// API keys: who may call this gateway. Make a key with a name and its scopes (the key itself is
// shown once: the gateway keeps only its hash), list the keys by their first characters, and
// revoke one after confirming.

import { api, keyStore } from "../api.js";
import { card, confirmation, copyButton, errorNotice, flagMissing, h, mono, pageHeader, replace, table, timeAgo } from "../ui.js";

/** The scopes a key may have, as the API names them, and what each lets it call. */
const SCOPES = [
  ["inference", "The OpenAI endpoints: models, chat, completions, embeddings."],
  ["admin", "Deployments, files, fine-tuning jobs and these keys."],
];

/** Whether `key` is the one this tab signs in with (the API lists only a key's prefix). */
function isThisTab(key) {
  const mine = keyStore.get();
  return Boolean(mine) && mine.startsWith(key.prefix);
}

function nameCell(key) {
  return h(
    "span",
    {},
    h("strong", { text: key.name }),
    isThisTab(key) ? h("span", { class: "chip", text: "this tab" }) : null,
    h("div", { class: "hint" }, mono(key.id)),
  );
}

function stateCell(key) {
  if (key.revoked) {
    return h("span", {}, h("span", { class: "badge badge-muted", dataset: { status: "revoked" } }, "revoked"), " ", timeAgo(key.revoked));
  }
  return h("span", { class: "badge badge-ok", dataset: { status: "active" } }, "active");
}

/** The new key, shown this once: the API never returns it again, so neither can the console. */
function secretBox(created, dismiss) {
  const copy = copyButton(created.key, "Copy key");
  copy.setAttribute("aria-label", `Copy the key of ${created.name}`);
  return h(
    "div",
    { class: "alert alert-ok secret", id: "new-key", role: "status", "aria-label": `New API key ${created.name}` },
    h("strong", { text: `Key ${created.name} created: copy it now` }),
    h("div", { class: "secret-row" }, h("code", { class: "mono secret-value", id: "new-key-secret", text: created.key }), copy),
    h(
      "span",
      { class: "alert-text" },
      "It will not be shown again: the gateway keeps only its hash. Give it to its user as ",
      h("code", { text: "Authorization: Bearer …" }),
      "; if it is lost, revoke it and make another.",
    ),
    h("button", { type: "button", class: "button small ghost", text: "I have stored it", onclick: dismiss }),
  );
}

/**
 * Without keys (the loopback `make up` gateway) the API still keeps keys but checks none: said
 * plainly, or a key made here would look like the only way in.
 */
function keysOff() {
  return h(
    "div",
    { class: "alert alert-warn", id: "keys-off", role: "note" },
    h("strong", { text: "This gateway runs without API keys." }),
    h(
      "span",
      { class: "alert-text" },
      "It listens on loopback only and lets every request in, so the keys below are not checked. Keys made here are kept in its database and are needed once the gateway is started with keys required.",
    ),
  );
}

export default {
  title: "API keys",
  nav: "keys",
  render({ root, signal, poll, access }) {
    const name = h("input", { id: "key-name", name: "name", required: true, maxlength: "128", autocomplete: "off", spellcheck: "false", placeholder: "who or what uses it, e.g. support-bot" });
    const scopeBoxes = SCOPES.map(([scope]) => h("input", { type: "checkbox", name: "scopes", value: scope, id: `key-scope-${scope}`, checked: scope === "inference" }));
    const problems = h("div", { class: "stack" });
    const submit = h("button", { type: "submit", class: "button primary", id: "key-create", text: "Create key" });
    const created = h("div", { class: "stack", "aria-live": "polite" });
    const confirmSlot = h("div", { class: "stack" });
    const notices = h("div", { class: "stack", "aria-live": "polite" });
    const list = h("div");

    const form = h(
      "form",
      { class: "form", id: "new-key-form", novalidate: true },
      card(
        "New key",
        {},
        h(
          "div",
          { class: "form-row" },
          h("div", { class: "field" }, h("label", { class: "label", for: "key-name", text: "Name" }), name, h("p", { class: "hint", text: "Shown in this list, to know whose key to revoke." })),
          h(
            "fieldset",
            { class: "field" },
            h("legend", { class: "label", text: "Scopes" }),
            h("div", { class: "checks" }, scopeBoxes.map((box) => h("label", { class: "check" }, box, h("span", { text: box.value })))),
            h("div", { class: "hint" }, SCOPES.map(([scope, what]) => h("div", {}, h("strong", { text: scope }), `: ${what}`))),
          ),
        ),
        problems,
        h("div", { class: "actions" }, submit),
      ),
    );
    root.append(pageHeader("API keys", "Who may call this gateway: each key has a name saying who uses it and the scopes it may call."));
    if (access.mode === "open") root.append(keysOff());
    root.append(created, form, confirmSlot, notices, card("Keys", {}, list));

    let keys = [];
    // `pending`: the id of the key whose revocation awaits confirmation.
    const confirmer = confirmation({ slot: confirmSlot, notices, id: "confirm-revoke", draw: () => drawConfirm(), settled: () => { drawList(); refresh.now(); } });

    const revoke = (id) => {
      const target = keys.find((k) => k.id === id);
      return confirmer.run(async () => {
        const revoked = await api.delete(`/v1/keys/${encodeURIComponent(id)}`, { signal });
        keys = keys.map((k) => (k.id === id ? revoked : k));
        return `Revoked ${revoked.name}: it is refused from now on.`;
      }, `${target?.name ?? id} was not revoked.`);
    };

    const drawConfirm = () => {
      const target = keys.find((k) => k.id === confirmer.pending);
      if (!target) {
        replace(confirmSlot);
        return;
      }
      // Revoking the tab's own key signs the console out: the next call gets 401 and asks again.
      const own = isThisTab(target) ? " This tab signs in with it: the console will ask for another key." : "";
      replace(
        confirmSlot,
        confirmer.dialog({
          label: `Revoke ${target.name}?`,
          text: `Revoke ${target.name} (${target.prefix}…)? Clients using it get 401 from now on; a revoked key cannot be restored.${own}`,
          yes: "Yes, revoke it",
          working: "Revoking…",
          onYes: () => revoke(target.id),
        }),
      );
    };

    const drawList = () => {
      // Newest first: a key just made is at the top, beside the form that made it.
      const rows = [...keys].reverse();
      replace(
        list,
        table(
          [
            { label: "Name", cell: nameCell },
            { label: "Key", cell: (k) => mono(`${k.prefix}…`) },
            { label: "Scopes", cell: (k) => h("span", { class: "chips" }, k.scopes.map((s) => h("span", { class: "chip", text: s }))) },
            { label: "Created", cell: (k) => timeAgo(k.created) },
            { label: "State", cell: stateCell },
            {
              label: "",
              class: "actions-col",
              cell: (k) =>
                k.revoked
                  ? ""
                  : h("button", { type: "button", class: "button small ghost danger-text", text: "Revoke", "aria-label": `Revoke ${k.name}`, disabled: confirmer.busy, onclick: () => confirmer.ask(k.id) }),
            },
          ],
          rows,
          { empty: "No API key yet: make one above.", rowClass: (k) => (k.revoked ? "revoked-row" : null) },
        ),
      );
    };

    const refresh = poll(async () => {
      try {
        const listed = await api.get("/v1/keys", { signal });
        keys = listed.data;
      } catch (error) {
        if (error.name === "AbortError") throw error;
        replace(list, errorNotice(error));
        return;
      }
      drawConfirm();
      drawList();
    }, 15000);

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const scopes = scopeBoxes.filter((box) => box.checked).map((box) => box.value);
      const missing = [];
      if (!name.value.trim()) missing.push([name, "Name the key after who or what uses it."]);
      if (!scopes.length) missing.push([scopeBoxes[0], "Choose at least one scope."]);
      if (flagMissing(form, problems, missing)) return;
      submit.disabled = true;
      submit.textContent = "Creating…";
      try {
        const made = await api.post("/v1/keys", { name: name.value.trim(), scopes }, { signal });
        replace(created, secretBox(made, () => replace(created)));
        form.reset();
        refresh.now();
      } catch (error) {
        if (error.name === "AbortError") return;
        replace(problems, errorNotice(error, { title: "The key was not created." }));
      } finally {
        submit.disabled = false;
        submit.textContent = "Create key";
      }
    });
  },
};
