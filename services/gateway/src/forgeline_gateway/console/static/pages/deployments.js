// Deployments: what the gateway serves, each base deployment with the adapter deployments served
// on its processes beneath it; undeploy one after confirming.

import { api, query } from "../api.js";
import { badge, card, confirmation, errorNotice, h, link, mono, pageHeader, replace, timeAgo } from "../ui.js";

const COLUMNS = ["Name", "Backend", "Status", "Instances", "Source", "Created", ""];

/** The last part of a file path. */
function fileName(path) {
  return String(path).split("/").pop();
}

/**
 * Where a deployment's model comes from: `{kind, value}` with kind "registry" (a registry
 * version), "GGUF" (a file by path), "HF" (a model name or directory for vLLM) or "URL".
 */
export function deploymentSources(spec) {
  const sources = [];
  const add = (kind, value) => sources.push({ kind, value });
  if (spec.registry_gguf) add("registry", spec.registry_gguf);
  if (spec.registry_model) add("registry", spec.registry_model);
  if (spec.registry_adapter) add("registry", spec.registry_adapter);
  for (const reference of spec.registry_lora ?? []) add("registry", reference);
  if (spec.gguf) add("GGUF", fileName(spec.gguf));
  for (const path of spec.lora ?? []) add("GGUF", fileName(path));
  if (spec.base_model) add("HF", spec.base_model);
  if (spec.adapter) add("HF", fileName(spec.adapter));
  if (!sources.length) {
    for (const url of spec.urls ?? []) add("URL", url);
    if (spec.url) add("URL", spec.url);
  }
  return sources;
}

/**
 * The deployments as groups: each base (any deployment not served on another) with the adapter
 * deployments whose `spec.base` names it, in the API's order; an adapter whose base is not listed
 * makes a group of its own, marked `orphan`.
 */
export function groupDeployments(deployments) {
  const names = new Set(deployments.map((d) => d.name));
  const groups = [];
  const byBase = new Map();
  for (const d of deployments) {
    if (d.spec?.base && names.has(d.spec.base)) continue;
    const group = { base: d, adapters: [], orphan: Boolean(d.spec?.base) };
    groups.push(group);
    byBase.set(d.name, group);
  }
  for (const d of deployments) {
    if (d.spec?.base && names.has(d.spec.base)) byBase.get(d.spec.base)?.adapters.push(d);
  }
  return groups;
}

/** Whether the playground can chat with a deployment. */
function chattable(d) {
  return d.status === "ready" && !d.spec?.embeddings;
}

function nameCell(d, { adapter = false } = {}) {
  const name = chattable(d)
    ? link(`/console/playground${query({ model: d.name })}`, mono(d.name, { max: 48 }), {
        class: "deployment-link",
        title: `Chat with ${d.name} in the playground`,
      })
    : mono(d.name, { max: 48 });
  if (!adapter) {
    const count = d.adapters?.length ?? 0;
    // A vLLM base loads its adapters on demand: how many are in its server now.
    const loaded = d.backend === "vllm" ? `, ${d.loaded_adapters?.length ?? 0} loaded` : "";
    const note = count
      ? h("span", { class: "cell-note", text: `${count} adapter${count === 1 ? "" : "s"}${loaded}` })
      : null;
    return h("span", { class: "deployment-name" }, name, note);
  }
  return h(
    "span",
    { class: "deployment-name" },
    h("span", { class: "adapter-mark", "aria-hidden": "true", text: "↳" }),
    name,
    h("span", { class: "cell-note" }, "adapter on ", mono(d.spec.base)),
  );
}

function sourceCell(d) {
  const sources = deploymentSources(d.spec ?? {});
  if (!sources.length) return h("span", { class: "muted", text: "—" });
  return h(
    "span",
    { class: "sources" },
    sources.map(({ kind, value }) =>
      h("span", { class: "source" }, h("span", { class: "chip", text: kind }), mono(value, { max: 40 })),
    ),
  );
}

function statusCell(d) {
  return h("span", {}, badge(d.status), d.error ? h("div", { class: "hint", text: d.error }) : null);
}

export default {
  title: "Deployments",
  nav: "deployments",
  render({ root, signal, poll }) {
    const confirmSlot = h("div", { class: "stack" });
    const notices = h("div", { class: "stack", "aria-live": "polite" });
    const list = h("div");
    root.append(
      pageHeader(
        "Deployments",
        "What this gateway serves; adapter deployments are listed beneath the base whose processes serve them.",
        link("/console/playground", "Open the playground", { class: "button ghost" }),
      ),
      confirmSlot,
      notices,
      card(null, {}, list),
    );

    let deployments = [];
    // `pending`: the name of the deployment whose undeploy awaits confirmation.
    const confirmer = confirmation({ slot: confirmSlot, notices, id: "confirm-undeploy", draw: () => drawConfirm(), settled: () => { drawList(); refresh.now(); } });

    const undeploy = (name) =>
      confirmer.run(async () => {
        await api.delete(`/v1/deployments/${encodeURIComponent(name)}`, { signal });
        deployments = deployments.filter((d) => d.name !== name);
        return `Undeployed ${name}.`;
      }, `${name} was not undeployed.`);

    const drawConfirm = () => {
      const name = confirmer.pending;
      if (!name) {
        replace(confirmSlot);
        return;
      }
      const target = deployments.find((d) => d.name === name);
      const adapters = target?.adapters ?? [];
      const what = target?.spec?.base
        ? `Undeploy ${name}? Its base ${target.spec.base} restarts without it; requests in flight finish first.`
        : `Undeploy ${name}? Clients calling it get 404 from now on.`;
      replace(
        confirmSlot,
        confirmer.dialog({
          label: `Undeploy ${name}?`,
          text: adapters.length ? `${what} Its adapters (${adapters.join(", ")}) must be undeployed first.` : what,
          yes: "Yes, undeploy it",
          working: "Undeploying…",
          onYes: () => undeploy(confirmer.pending),
        }),
      );
    };

    const row = (d, { adapter = false } = {}) =>
      h(
        "tr",
        { class: adapter ? "adapter-row" : "base-row", dataset: { deployment: d.name } },
        [
          nameCell(d, { adapter }),
          d.backend,
          statusCell(d),
          String(d.instances),
          sourceCell(d),
          timeAgo(d.created),
          h("button", {
            type: "button",
            class: "button small ghost danger-text",
            text: "Undeploy",
            "aria-label": `Undeploy ${d.name}`,
            disabled: confirmer.busy,
            onclick: () => confirmer.ask(d.name),
          }),
        ].map((cell, index) =>
          h("td", { class: index === 3 ? "num" : index === 6 ? "actions-col" : null, "data-label": COLUMNS[index] }, cell),
        ),
      );

    const drawList = () => {
      if (!deployments.length) {
        replace(
          list,
          h("p", { class: "empty" }, "Nothing is deployed. Deploy a registry version with ", h("code", { class: "mono", text: "forgeline deploy" }), ", or fine-tune a model: its job deploys the result."),
        );
        return;
      }
      const groups = groupDeployments(deployments);
      replace(
        list,
        h(
          "div",
          { class: "table-wrap" },
          h(
            "table",
            { class: "table deployments-table", "aria-label": "Deployments" },
            h("thead", {}, h("tr", {}, COLUMNS.map((label, index) => h("th", { scope: "col", class: index === 3 ? "num" : null }, label || h("span", { class: "visually-hidden", text: "Actions" })))) ),
            groups.map((group) =>
              h(
                "tbody",
                {
                  class: `deployment-group${group.adapters.length ? " with-adapters" : ""}`,
                  dataset: { base: group.base.name },
                  "aria-label": group.adapters.length ? `${group.base.name} and its adapters` : group.base.name,
                },
                row(group.base, { adapter: group.orphan }),
                group.adapters.map((d) => row(d, { adapter: true })),
              ),
            ),
          ),
        ),
      );
    };

    const refresh = poll(async () => {
      try {
        const listed = await api.get("/v1/deployments", { signal });
        deployments = listed.data;
      } catch (error) {
        if (error.name === "AbortError") throw error;
        replace(list, errorNotice(error));
        return;
      }
      if (confirmer.pending && !deployments.some((d) => d.name === confirmer.pending)) confirmer.cancel();
      drawList();
    }, 5000);
  },
};
