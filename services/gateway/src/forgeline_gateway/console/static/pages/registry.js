// Registry: every model and its versions (kind, size, aliases, quality card labels), and a
// version's lineage drawn as a graph, dataset -> adapter -> merged -> each GGUF -> the deployments
// serving them (GET /v1/registry/models, /versions, /lineage; GET /v1/deployments).

import { api, query } from "../api.js";
import { bytes, card, errorNotice, h, mono, pageHeader, replace, svg, table, timeAgo } from "../ui.js";

const QUALITY = "quality.";
const NODE_W = 230;
const NODE_H = 46;
const GAP_X = 110;
const GAP_Y = 22;

/** The quality card a job's evaluation wrote on a version (`quality.<grader>` labels). */
export function qualityOf(version) {
  return Object.entries(version.labels || {})
    .filter(([key]) => key.startsWith(QUALITY))
    .map(([key, value]) => `${key.slice(QUALITY.length)} ${value}`)
    .join(", ");
}

/** The registry version a deployment serves, if any (a GGUF, or its adapters'). */
function servedVersions(deployment) {
  const spec = deployment.spec || {};
  return [spec.registry_gguf, spec.metadata?.version, ...(spec.registry_lora || [])].filter(Boolean);
}

/**
 * Columns (layers) for a lineage graph: each node one step right of its furthest parent, so the
 * arrows run left to right (dataset, adapter, merged, GGUF, deployment).
 */
export function layers(nodes, edges) {
  const depth = new Map(nodes.map((n) => [n, 0]));
  for (let round = 0; round < nodes.length; round++) {
    let moved = false;
    for (const { parent, child } of edges) {
      const next = (depth.get(parent) ?? 0) + 1;
      if (depth.has(child) && next > depth.get(child)) {
        depth.set(child, next);
        moved = true;
      }
    }
    if (!moved) break;
  }
  return depth;
}

function lineageGraph(graph, deployments, selected) {
  const versions = new Map(graph.versions.map((v) => [v.reference, v]));
  const edges = graph.edges.filter((e) => versions.has(e.parent) && versions.has(e.child));
  const nodes = [...versions.keys()];
  for (const deployment of deployments) {
    const served = servedVersions(deployment).filter((ref) => versions.has(ref));
    if (!served.length) continue;
    const id = `deployment:${deployment.spec.name}`;
    nodes.push(id);
    for (const ref of served) edges.push({ parent: ref, child: id, relation: "serves" });
  }
  const depth = layers(nodes, edges);
  const columns = [];
  for (const node of nodes) {
    const column = depth.get(node) ?? 0;
    (columns[column] ||= []).push(node);
  }
  const place = new Map();
  columns.forEach((column, x) => column.forEach((node, y) => place.set(node, { x: 20 + x * (NODE_W + GAP_X), y: 20 + y * (NODE_H + GAP_Y) })));
  const width = 40 + columns.length * (NODE_W + GAP_X) - GAP_X;
  const height = 40 + Math.max(...columns.map((c) => c.length)) * (NODE_H + GAP_Y) - GAP_Y;

  const drawn = [];
  for (const edge of edges) {
    const from = place.get(edge.parent);
    const to = place.get(edge.child);
    const x1 = from.x + NODE_W;
    const y1 = from.y + NODE_H / 2;
    const x2 = to.x;
    const y2 = to.y + NODE_H / 2;
    const middle = (x1 + x2) / 2;
    drawn.push(
      svg(
        "g",
        { class: "lineage-edge", "data-relation": edge.relation },
        svg("path", { d: `M${x1},${y1} C${middle},${y1} ${middle},${y2} ${x2 - 6},${y2}`, "marker-end": "url(#arrow)" }),
        svg("text", { x: middle, y: (y1 + y2) / 2 - 4, "text-anchor": "middle" }, edge.relation.replace(/_/g, " ")),
      ),
    );
  }
  for (const node of nodes) {
    const { x, y } = place.get(node);
    const version = versions.get(node);
    const isDeployment = node.startsWith("deployment:");
    // An uploaded file is named by its filename (the Files API labels its version so).
    const title = isDeployment ? node.slice("deployment:".length) : version.labels?.filename || node;
    const subtitle = isDeployment ? "deployment" : `${version.kind} · ${bytes(version.size_bytes)}`;
    drawn.push(
      svg(
        "g",
        {
          class: `lineage-node${isDeployment ? " lineage-deployment" : ""}${node === selected ? " lineage-selected" : ""}`,
          "data-node": node,
          transform: `translate(${x},${y})`,
        },
        svg("rect", { width: NODE_W, height: NODE_H, rx: 8 }),
        svg("text", { x: 10, y: 19, class: "lineage-title" }, title.length > 30 ? `${title.slice(0, 29)}…` : title),
        svg("text", { x: 10, y: 36, class: "lineage-sub" }, subtitle),
        svg("title", {}, version ? `${node} (${version.kind})${qualityOf(version) ? `\n${qualityOf(version)}` : ""}` : title),
      ),
    );
  }
  const drawing = svg(
    "svg",
    { class: "lineage", viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img", "aria-label": `Lineage of ${selected}: ${nodes.length} nodes, ${edges.length} links` },
    svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 5, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, svg("path", { d: "M0,0 L10,5 L0,10 z" }))),
    ...drawn,
  );
  // Scaled down to the card's width when wider, never up (through the CSSOM: the console's CSP
  // allows no style attributes).
  drawing.style.maxWidth = `${width}px`;
  return drawing;
}

/**
 * A version's deploy form: a name, then POST /v1/deployments. A GGUF is served by llama.cpp
 * (`registry_gguf`), an HF model (base or merged) by vLLM (`registry_model`).
 */
function deployForm(version, signal) {
  const onVllm = version.kind !== "gguf";
  const name = h("input", { id: "deploy-name", class: "input", value: `${version.model.replace(/[^\w.-]/g, "-")}-v${version.number}`, "aria-label": "Deployment name" });
  const result = h("div", { "aria-live": "polite" });
  const button = h("button", { type: "submit", class: "button small", text: onVllm ? "Deploy on vLLM" : "Deploy on llama.cpp" });
  const form = h("form", { class: "deploy-form" }, h("label", { for: "deploy-name", text: "Serve it as" }), name, button, result);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    try {
      const body = onVllm
        ? { name: name.value.trim(), backend: "vllm", registry_model: version.reference }
        : { name: name.value.trim(), backend: "llamacpp", registry_gguf: version.reference };
      const deployed = await api.post("/v1/deployments", body, { signal });
      replace(result, h("div", { class: "alert alert-ok", role: "status" }, "Deployed as ", h("a", { href: `/console/playground${query({ model: deployed.name ?? body.name })}`, text: deployed.name ?? body.name }), "."));
    } catch (error) {
      if (error.name !== "AbortError") replace(result, errorNotice(error, { title: "Not deployed." }));
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

function versionDetails(version, signal) {
  return h(
    "div",
    { class: "stack" },
    table(
      [
        { label: "File", cell: (a) => mono(a.path) },
        { label: "Kind", cell: (a) => a.gguf_file_type || a.kind },
        { label: "Size", cell: (a) => bytes(a.size_bytes), class: "num" },
        { label: "SHA-256", cell: (a) => h("span", { class: "mono", title: a.sha256, text: `${a.sha256.slice(0, 16)}…` }) },
      ],
      version.artifacts || [],
      { empty: "No files." },
    ),
    ["gguf", "base", "merged"].includes(version.kind) ? deployForm(version, signal) : null,
  );
}

export default {
  title: "Registry",
  nav: "registry",
  render({ root, signal, poll, query: params, navigate }) {
    const models = h("div");
    const versions = h("div");
    const lineage = h("div", { class: "lineage-wrap" });
    const details = h("div");
    const detailsCard = card("Files", { class: "card-files" }, details);
    const versionsCard = card("Versions", { class: "card-versions" }, versions);
    const lineageCard = card("Lineage", { class: "card-lineage" }, lineage);
    root.append(
      pageHeader("Registry", "Every model and version Forgeline keeps, what each was made from, and what serves it."),
      card("Models", {}, models),
      versionsCard,
      detailsCard,
      lineageCard,
    );
    const chosenModel = params.get("model");
    const chosenVersion = params.get("version");
    versionsCard.hidden = !chosenModel;
    lineageCard.hidden = !chosenVersion;
    detailsCard.hidden = !chosenVersion;
    const go = (model, version = null) => navigate(`/console/registry${query({ model, version })}`);

    poll(async () => {
      try {
        const listed = await api.get("/v1/registry/models", { signal });
        replace(
          models,
          table(
            [
              { label: "Model", cell: (m) => h("a", { href: `/console/registry${query({ model: m.name })}`, onclick: (e) => (e.preventDefault(), go(m.name)) }, h("strong", { text: m.name })) },
              { label: "Versions", cell: (m) => String(m.version_count), class: "num" },
              { label: "Latest", cell: (m) => (m.latest_version ? String(m.latest_version) : "—"), class: "num" },
              { label: "Aliases", cell: (m) => Object.entries(m.aliases).map(([alias, n]) => h("span", { class: "chip", text: `${alias} → ${n}` })) },
              { label: "Updated", cell: (m) => (m.updated_at ? timeAgo(m.updated_at) : "—") },
            ],
            listed.data,
            { empty: "The registry is empty: push a model (forgeline push) or import one (forgeline import hf:ORG/NAME)." },
          ),
        );
      } catch (error) {
        if (error.name === "AbortError") throw error;
        replace(models, errorNotice(error));
      }
    }, 15000);

    if (chosenModel) {
      versionsCard.querySelector("h2").textContent = `Versions of ${chosenModel}`;
      api.get(`/v1/registry/versions${query({ model: chosenModel })}`, { signal }).then(
        (listed) =>
          replace(
            versions,
            table(
              [
                { label: "Version", cell: (v) => mono(v.reference) },
                { label: "Kind", cell: (v) => v.kind },
                { label: "Size", cell: (v) => bytes(v.size_bytes), class: "num" },
                { label: "Aliases", cell: (v) => v.aliases.map((a) => h("span", { class: "chip", text: a })) },
                { label: "Quality", cell: (v) => qualityOf(v) || "—" },
                { label: "Made from", cell: (v) => v.parents.map((p) => h("div", { class: "hint" }, `${p.relation.replace(/_/g, " ")} `, mono(p.reference))) },
                { label: "Created", cell: (v) => (v.created_at ? timeAgo(v.created_at) : "—") },
                { label: "", class: "actions-col", cell: (v) => h("button", { type: "button", class: "button small ghost", text: "Lineage", onclick: () => go(chosenModel, String(v.number)) }) },
              ],
              listed.data,
              { empty: "No version.", rowClass: (v) => (String(v.number) === chosenVersion ? "row-selected" : "") },
            ),
          ),
        (error) => error.name !== "AbortError" && replace(versions, errorNotice(error)),
      );
    }

    if (chosenModel && chosenVersion) {
      const reference = `${chosenModel}:${chosenVersion}`;
      lineageCard.querySelector("h2").textContent = `Lineage of ${reference}`;
      detailsCard.querySelector("h2").textContent = `Files of ${reference}`;
      api.get(`/v1/registry/versions/${reference}`, { signal }).then(
        (version) => replace(details, versionDetails(version, signal)),
        (error) => error.name !== "AbortError" && replace(details, errorNotice(error)),
      );
      Promise.all([
        api.get(`/v1/registry/lineage${query({ reference, depth: 8 })}`, { signal }),
        api.get("/v1/deployments", { signal }).catch(() => ({ data: [] })),
      ]).then(
        ([graph, deployments]) => replace(lineage, lineageGraph(graph, deployments.data || [], reference)),
        (error) => error.name !== "AbortError" && replace(lineage, errorNotice(error)),
      );
    }
  },
};
