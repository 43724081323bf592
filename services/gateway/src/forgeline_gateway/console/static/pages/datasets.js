// Datasets: upload fine-tuning files by drag-and-drop through the Files API, see each bad line the
// API names when it refuses one, list what is stored, and preview a file's first records exactly as
// the model will be trained on them: through the base model's chat template, with the spans the
// loss is computed on highlighted (GET /v1/files/{id}/preview).

import { api, query } from "../api.js";
import { badge, bytes, card, errorNotice, h, link, mono, pageHeader, replace, svg, table, timeAgo } from "../ui.js";

/** The API's refusal of a file split into its summary and one problem a line. */
export function fileProblems(message) {
  const [summary, ...lines] = String(message).split("\n");
  return { summary, problems: lines.map((line) => line.trim()).filter(Boolean) };
}

function problemItem(text) {
  const match = /^(line \d+|record \d+)(:\s*)(.*)$/i.exec(text);
  if (!match) return h("li", { text });
  return h("li", {}, h("strong", { text: match[1] }), h("span", { text: `: ${match[3]}` }));
}

function uploadResult(name, outcome) {
  if (outcome.state === "uploading") {
    return h("div", { class: "upload upload-busy", role: "status" }, h("span", { class: "spinner", "aria-hidden": "true" }), h("span", {}, "Uploading and checking ", h("strong", { text: name }), "…"));
  }
  if (outcome.state === "accepted") {
    const file = outcome.file;
    return h(
      "div",
      { class: "upload upload-ok", role: "status" },
      h("span", { class: "upload-icon", "aria-hidden": "true", text: "✓" }),
      h(
        "div",
        {},
        h("div", {}, h("strong", { text: file.filename }), " was accepted as ", h("strong", { text: file.format ?? "data" }), file.preference ? " (preference pairs)" : "", "."),
        h("div", { class: "hint" }, mono(file.id), " · ", bytes(file.bytes), " · ", link(`/console/jobs/new${query({ training_file: file.id })}`, "Fine-tune on it")),
      ),
    );
  }
  const error = outcome.error;
  if (error.status === 400 && (error.code === "invalid_file" || error.param === "file")) {
    const { summary, problems } = fileProblems(error.message);
    return h(
      "div",
      { class: "upload upload-bad alert alert-error", role: "alert", dataset: { code: error.code ?? "" } },
      h("div", { class: "upload-title" }, h("strong", { text: `${name} was not accepted` })),
      h("p", { class: "upload-summary", text: summary }),
      problems.length ? h("ul", { class: "problems" }, problems.map(problemItem)) : null,
    );
  }
  return errorNotice(error, { title: `${name} was not uploaded.` });
}

/** One previewed record: the rendered text, its trained spans in <mark>, or why it cannot be. */
export function previewRecord(record) {
  const title = h("div", { class: "preview-title", text: `Record ${record.index + 1}` });
  if (record.problem) return h("div", { class: "preview-record" }, title, h("p", { class: "hint", text: record.problem }));
  return h(
    "div",
    { class: "preview-record", dataset: { index: String(record.index) } },
    title,
    h(
      "pre",
      { class: "preview-text" },
      record.segments.map((segment) => (segment.trained ? h("mark", { class: "trained", text: segment.text }) : h("span", { text: segment.text }))),
    ),
  );
}

/** Chooses a file to preview and a base model; draws the records the API renders. */
function previewPanel(signal) {
  const body = h("div", { class: "stack", id: "preview-records" });
  const model = h("input", { id: "preview-model", class: "input", list: "preview-models", placeholder: "base model, e.g. tiny-llama", autocomplete: "off" });
  const models = h("datalist", { id: "preview-models" });
  const onPrompt = h("input", { type: "checkbox", id: "preview-train-on-prompt" });
  const history = h("input", { type: "checkbox", id: "preview-mask-history" });
  const name = h("strong");
  const element = card(
    "Preview",
    { class: "card-preview" },
    h("p", { class: "hint" }, "The first records of ", name, " as the model sees them, rendered through the base model's chat template. ", h("mark", { class: "trained", text: "Highlighted" }), " text is what the loss is computed on (LLaMA-Factory's supervised masking); the rest is context only."),
    h(
      "div",
      { class: "preview-controls" },
      h("label", { for: "preview-model", text: "Base model" }),
      model,
      models,
      h("label", { class: "toggle" }, onPrompt, h("span", { text: "Train on prompt" })),
      h("label", { class: "toggle" }, history, h("span", { text: "Mask history (last answer only)" })),
    ),
    body,
  );
  element.hidden = true;
  let file = null;
  let timer = null;
  const load = async () => {
    if (!file || !model.value.trim()) return;
    replace(body, h("p", { class: "hint", text: "Rendering…" }));
    try {
      const params = { model: model.value.trim(), limit: 5, train_on_prompt: onPrompt.checked, mask_history: history.checked };
      const preview = await api.get(`/v1/files/${encodeURIComponent(file.id)}/preview${query(params)}`, { signal });
      replace(body, preview.data.length ? preview.data.map(previewRecord) : h("p", { class: "empty", text: "The file has no records." }));
    } catch (error) {
      if (error.name === "AbortError") return;
      replace(body, errorNotice(error, { title: "The preview could not be made." }));
    }
  };
  const later = () => {
    clearTimeout(timer);
    timer = setTimeout(load, 300);
  };
  model.addEventListener("input", later);
  onPrompt.addEventListener("change", load);
  history.addEventListener("change", load);
  // Base models offered: those the deployed models derive from, and deployed bases themselves
  // (as the new fine-tune form offers them).
  api.get("/v1/models", { signal }).then(
    (listed) => {
      const bases = new Set();
      for (const m of listed.data) {
        if (m.metadata?.base) bases.add(m.metadata.base);
        else if (!m.id.startsWith("ft:") && m.endpoints.includes("/v1/chat/completions")) bases.add(m.id);
      }
      replace(models, [...bases].map((base) => h("option", { value: base })));
      if (!model.value && bases.size) model.value = [...bases][0];
      load();
    },
    () => {},
  );
  return {
    element,
    show(chosen) {
      file = chosen;
      name.textContent = chosen.filename;
      element.hidden = false;
      element.scrollIntoView({ block: "nearest" });
      load();
    },
  };
}

export default {
  title: "Datasets",
  nav: "datasets",
  render({ root, signal, poll }) {
    const input = h("input", { type: "file", id: "dataset-file", accept: ".jsonl,.json,application/json", multiple: true, class: "visually-hidden" });
    const zone = h(
      "label",
      { class: "dropzone", for: "dataset-file", id: "dropzone" },
      svg(
        "svg",
        { viewBox: "0 0 24 24", class: "dropzone-icon", "aria-hidden": "true" },
        svg("path", { d: "M12 16V4m0 0l-4 4m4-4l4 4M4 16v3a1 1 0 0 0 1 1h14a1 1 0 0 0 1-1v-3" }),
      ),
      h("span", { class: "dropzone-title", text: "Drop a JSONL or JSON file here" }),
      h("span", { class: "dropzone-sub" }, "or ", h("span", { class: "linkish", text: "choose a file" }), " — checked line by line before it is kept"),
    );
    const results = h("div", { class: "stack", "aria-live": "polite", id: "upload-results" });
    const list = h("div");
    const preview = previewPanel(signal);
    root.append(
      pageHeader("Datasets", "Fine-tuning files, stored in the registry. Every upload is checked with the trainer's own rules."),
      card(
        "Upload",
        {},
        zone,
        input,
        h(
          "p",
          { class: "hint" },
          "Accepted: OpenAI chat JSONL (",
          h("code", { text: '{"messages": [...]}' }),
          "), OpenAI preference JSONL, alpaca and sharegpt JSON or JSONL (also as chosen/rejected pairs), pre-training text (",
          h("code", { text: '{"text": ...}' }),
          "), KTO data with a boolean ",
          h("code", { text: "kto_tag" }),
          ".",
        ),
        results,
      ),
      card("Files", {}, list),
      preview.element,
    );

    const refresh = poll(async () => {
      try {
        const files = await api.get(`/v1/files${query({ purpose: "fine-tune", limit: 1000 })}`, { signal });
        replace(
          list,
          table(
            [
              { label: "File", cell: (f) => h("strong", { text: f.filename }) },
              { label: "ID", cell: (f) => mono(f.id) },
              { label: "Layout", cell: (f) => h("span", {}, f.format ?? "—", f.preference ? h("span", { class: "chip", text: "pairs" }) : null) },
              { label: "Records", cell: (f) => (f.records ?? "—").toLocaleString(), class: "num" },
              { label: "Size", cell: (f) => bytes(f.bytes), class: "num" },
              { label: "Status", cell: (f) => badge(f.status ?? "processed") },
              { label: "Uploaded", cell: (f) => timeAgo(f.created_at) },
              {
                label: "",
                class: "actions-col",
                cell: (f) =>
                  h(
                    "span",
                    { class: "row-actions" },
                    h("button", { type: "button", class: "button small ghost", text: "Preview", onclick: () => preview.show(f) }),
                    link(`/console/jobs/new${query({ training_file: f.id })}`, "Fine-tune", { class: "button small" }),
                    deleteButton(f, () => refresh.now()),
                  ),
              },
            ],
            files.data,
            { empty: "No file uploaded yet: drop one above." },
          ),
        );
      } catch (error) {
        if (error.name === "AbortError") throw error;
        replace(list, errorNotice(error));
      }
    }, 10000);

    const upload = async (file) => {
      const slot = h("div");
      results.prepend(slot);
      replace(slot, uploadResult(file.name, { state: "uploading" }));
      const form = new FormData();
      form.append("purpose", "fine-tune");
      form.append("file", file, file.name);
      try {
        const stored = await api.upload("/v1/files", form, { signal });
        replace(slot, uploadResult(file.name, { state: "accepted", file: stored }));
        refresh.now();
      } catch (error) {
        if (error.name === "AbortError") return;
        replace(slot, uploadResult(file.name, { state: "refused", error }));
      }
    };
    const uploadAll = async (files) => {
      for (const file of files) await upload(file);
    };

    input.addEventListener("change", () => {
      uploadAll([...input.files]);
      input.value = "";
    });
    for (const name of ["dragenter", "dragover"]) {
      zone.addEventListener(name, (event) => {
        event.preventDefault();
        zone.classList.add("dropzone-active");
      });
    }
    for (const name of ["dragleave", "dragend"]) {
      zone.addEventListener(name, () => zone.classList.remove("dropzone-active"));
    }
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("dropzone-active");
      const files = [...(event.dataTransfer?.files ?? [])];
      if (files.length) uploadAll(files);
    });
    // A file dropped next to the zone must not make the browser open it in place of the console.
    for (const name of ["dragover", "drop"]) {
      document.addEventListener(name, (event) => event.preventDefault(), { signal });
    }
  },
};

function deleteButton(file, done) {
  let armed = false;
  const button = h("button", { type: "button", class: "button small ghost danger-text", text: "Delete" });
  button.addEventListener("click", async () => {
    if (!armed) {
      armed = true;
      button.textContent = "Really delete?";
      setTimeout(() => {
        armed = false;
        button.textContent = "Delete";
      }, 4000);
      return;
    }
    button.disabled = true;
    try {
      await api.delete(`/v1/files/${encodeURIComponent(file.id)}`);
      done();
    } catch (error) {
      button.replaceWith(errorNotice(error));
    }
  });
  return button;
}
