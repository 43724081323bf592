// Overview: the gateway's health, what it serves (deployments, models) and what it trains.

import { api, query } from "../api.js";
import { badge, card, errorNotice, h, link, mono, pageHeader, replace, table, timeAgo } from "../ui.js";

const ACTIVE = new Set(["validating_files", "queued", "running"]);
export const CHAT = "/v1/chat/completions";

/** Where a deployment's model comes from, in one line. */
export function deploymentSource(spec) {
  if (spec.registry_gguf) return spec.registry_gguf;
  if (spec.registry_model) return spec.registry_model;
  if (spec.gguf) return spec.gguf.split("/").pop();
  if (spec.base_model) return spec.adapter ? `${spec.base_model} + adapter` : spec.base_model;
  if (spec.urls?.length) return spec.urls.join(", ");
  if (spec.url) return spec.url;
  return "—";
}

function tile(label, value, note, tone = "") {
  return h(
    "div",
    { class: `tile ${tone ? `tile-${tone}` : ""}`.trim() },
    h("div", { class: "tile-label", text: label }),
    h("div", { class: "tile-value" }, value),
    h("div", { class: "tile-note" }, note),
  );
}

async function settle(promise) {
  try {
    return { value: await promise };
  } catch (error) {
    if (error?.name === "AbortError") throw error;
    return { error };
  }
}

export default {
  title: "Overview",
  nav: "overview",
  render({ root, signal, poll }) {
    const tiles = h("div", { class: "tiles", "aria-live": "polite" });
    const deployments = h("div");
    const jobs = h("div");
    const models = h("div");
    const versions = h("div");
    root.append(
      pageHeader(
        "Overview",
        "What this gateway serves and trains, refreshed every few seconds.",
        link("/console/jobs/new", "New fine-tune", { class: "button primary" }),
      ),
      tiles,
      h(
        "div",
        { class: "grid-2" },
        card("Deployments", { actions: link("/console/playground", "Open the playground", { class: "button small ghost" }) }, deployments),
        card("Fine-tuning jobs", { actions: link("/console/jobs", "All jobs", { class: "button small ghost" }) }, jobs),
      ),
      card("Models served", {}, models),
      card("Recent in the registry", { actions: link("/console/registry", "Registry", { class: "button small ghost" }) }, versions),
    );

    poll(async () => {
      const [health, deployed, listed, served, registered] = await Promise.all([
        settle(api.get("/health", { signal })),
        settle(api.get("/v1/deployments", { signal })),
        settle(api.get(`/v1/fine_tuning/jobs${query({ limit: 20 })}`, { signal })),
        settle(api.get("/v1/models", { signal })),
        settle(api.get("/v1/registry/models", { signal })),
      ]);

      const ready = deployed.value?.data.filter((d) => d.status === "ready").length ?? 0;
      const failed = deployed.value?.data.filter((d) => d.status === "failed").length ?? 0;
      const running = listed.value?.data.filter((j) => ACTIVE.has(j.status)) ?? [];
      replace(
        tiles,
        tile(
          "Gateway",
          health.value?.status === "ok" ? "Healthy" : "Unreachable",
          health.value ? "answering on this address" : health.error?.message,
          health.value?.status === "ok" ? "ok" : "bad",
        ),
        tile("Models served", served.value ? String(served.value.data.length) : "—", served.error ? "needs the inference scope" : "names clients can call"),
        tile(
          "Deployments",
          deployed.value ? `${ready} ready` : "—",
          deployed.error ? "needs the admin scope" : failed ? `${failed} failed` : "none failed",
          failed ? "bad" : "",
        ),
        tile(
          "Jobs running",
          listed.value ? String(running.length) : "—",
          listed.error ? (listed.error.status === 400 ? "fine-tuning not configured" : "needs the admin scope") : `${listed.value.data.length} listed`,
          running.length ? "active" : "",
        ),
      );

      replace(
        deployments,
        deployed.error
          ? errorNotice(deployed.error)
          : table(
              [
                { label: "Name", cell: (d) => mono(d.name, { max: 40 }) },
                { label: "Backend", cell: (d) => d.backend },
                { label: "Status", cell: (d) => h("span", {}, badge(d.status), d.error ? h("div", { class: "hint", text: d.error }) : null) },
                { label: "Instances", cell: (d) => String(d.instances), class: "num" },
                { label: "Source", cell: (d) => mono(deploymentSource(d.spec), { max: 36 }) },
              ],
              deployed.value.data,
              { empty: "Nothing is deployed yet." },
            ),
      );

      if (listed.error) {
        replace(jobs, errorNotice(listed.error));
      } else {
        const recent = listed.value.data.filter((j) => !ACTIVE.has(j.status)).slice(0, 5);
        replace(
          jobs,
          h("h3", { class: "subhead", text: "Running" }),
          running.length ? jobTable(running) : h("p", { class: "empty", text: "No job is running." }),
          recent.length ? [h("h3", { class: "subhead", text: "Recent" }), jobTable(recent)] : null,
          !listed.value.data.length ? h("p", { class: "empty" }, "No fine-tuning job yet. ", link("/console/jobs/new", "Start one"), ".") : null,
        );
      }

      // The models whose versions changed last (uploaded files are the Datasets page's).
      const recentModels = (registered.value?.data ?? [])
        .filter((m) => !m.name.startsWith("files/"))
        .sort((a, b) => (b.updated_at ?? 0) - (a.updated_at ?? 0))
        .slice(0, 6);
      replace(
        versions,
        registered.error
          ? errorNotice(registered.error)
          : table(
              [
                { label: "Model", cell: (m) => link(`/console/registry${query({ model: m.name })}`, mono(m.name, { max: 40 })) },
                { label: "Latest", cell: (m) => (m.latest_version ? link(`/console/registry${query({ model: m.name, version: m.latest_version })}`, `v${m.latest_version}`) : "—") },
                { label: "Versions", cell: (m) => String(m.version_count), class: "num" },
                { label: "Updated", cell: (m) => (m.updated_at ? timeAgo(m.updated_at) : "—") },
              ],
              recentModels,
              { empty: "Nothing registered yet." },
            ),
      );

      replace(
        models,
        served.error
          ? errorNotice(served.error)
          : table(
              [
                { label: "Model", cell: (m) => h("span", { class: "model-name" }, mono(m.id, { max: 56 })) },
                { label: "Backend", cell: (m) => m.backend },
                { label: "Base", cell: (m) => m.metadata?.base ?? "—" },
                { label: "Version", cell: (m) => m.metadata?.version ?? "—" },
                { label: "Quantization", cell: (m) => m.metadata?.quantization ?? "—" },
                { label: "Endpoints", cell: (m) => h("span", { class: "chips" }, m.endpoints.map((e) => h("span", { class: "chip", text: e.replace(/^\/v1\//, "").replace("chat/completions", "chat") }))) },
                { label: "", cell: (m) => (m.endpoints.includes(CHAT) ? link(`/console/playground${query({ model: m.id })}`, "Chat", { class: "button small ghost" }) : "") },
              ],
              served.value.data,
              { empty: "No model is served. Deploy one with `forgeline deploy` or fine-tune one." },
            ),
      );
    }, 5000);
  },
};

function jobTable(list) {
  return table(
    [
      { label: "Job", cell: (j) => link(`/console/jobs/${encodeURIComponent(j.id)}`, mono(j.id, { max: 22 })) },
      {
        label: "Status",
        cell: (j) => {
          const stage = j.forgeline?.stage;
          const note = stage && stage !== j.status ? h("span", { class: "cell-note", text: stage.replace(/_/g, " ") }) : null;
          return h("span", { class: "nowrap" }, badge(j.status), note);
        },
      },
      { label: "Base", cell: (j) => h("span", { class: "nowrap", text: j.model }) },
      { label: "Created", cell: (j) => timeAgo(j.created_at) },
    ],
    list,
  );
}
