// New fine-tune: a form that creates an ordinary job through POST /v1/fine_tuning/jobs, with the
// OpenAI SDK call that does the same, and the `forgeline train` YAML that trains the same way,
// written out live beside it.

import { api, query } from "../api.js";
import { bytes, card, copyButton, errorNotice, flagMissing, h, link, pageHeader, replace } from "../ui.js";

const METHODS = [
  ["supervised", "Supervised (SFT)", "Chat or instruction data; learns the answers."],
  ["dpo", "DPO", "Preference pairs: a preferred and a rejected answer per prompt."],
  ["kto", "KTO", "Answers each labelled desirable or not (kto_tag)."],
  ["pt", "Continued pre-training", "Plain text records ({\"text\": ...})."],
  ["rm", "Reward model", "Preference pairs; the model is registered, not served."],
];
const TYPES = [
  ["lora", "LoRA"],
  ["qlora", "QLoRA (4-bit base, GPU)"],
  ["full", "Full"],
  ["freeze", "Freeze (last layers)"],
];
const QUANTIZATIONS = ["q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0"];
/** The graders a job's evaluation offers (the gateway's forgeline.eval.graders), defaults first. */
const GRADERS = ["rouge_l", "bleu", "exact", "fuzzy_match", "gleu", "meteor", "rouge_1", "rouge_2"];
const DEFAULT_GRADERS = ["rouge_l", "bleu"];
/** The snippet's line length: what its panel shows without scrolling. */
const WIDTH = 64;

// --- the request, and the SDK call that sends it ----------------------------------------------

function numberOrAuto(text, integer) {
  const value = String(text ?? "").trim();
  if (!value || value.toLowerCase() === "auto") return "auto";
  const number = integer ? Number.parseInt(value, 10) : Number.parseFloat(value);
  return Number.isFinite(number) ? number : "auto";
}

/** The POST /v1/fine_tuning/jobs body for the form's values (auto values are left out). */
export function buildRequest(v) {
  const body = { model: v.model.trim(), training_file: v.training_file };
  if (v.validation_file) body.validation_file = v.validation_file;
  if (v.suffix.trim()) body.suffix = v.suffix.trim();
  if (String(v.seed).trim()) body.seed = Number.parseInt(v.seed, 10);
  const type = v.method === "dpo" ? "dpo" : "supervised";
  const hyperparameters = {};
  const add = (name, value) => {
    if (value !== "auto") hyperparameters[name] = value;
  };
  add("n_epochs", numberOrAuto(v.n_epochs, true));
  add("batch_size", numberOrAuto(v.batch_size, true));
  add("learning_rate_multiplier", numberOrAuto(v.learning_rate_multiplier, false));
  if (type === "dpo") add("beta", numberOrAuto(v.beta, false));
  body.method = { type };
  if (Object.keys(hyperparameters).length) body.method[type] = { hyperparameters };

  const forgeline = {};
  if (["pt", "kto", "rm"].includes(v.method)) forgeline.stage = v.method;
  if (v.finetuning_type !== "lora") forgeline.finetuning_type = v.finetuning_type;
  if (v.finetuning_type === "lora" || v.finetuning_type === "qlora") {
    const lora = {};
    const rank = numberOrAuto(v.lora_rank, true);
    const alpha = numberOrAuto(v.lora_alpha, false);
    if (rank !== "auto") lora.rank = rank;
    if (alpha !== "auto") lora.alpha = alpha;
    if (Object.keys(lora).length) forgeline.lora = lora;
  }
  const quantizations = v.quantizations.length ? v.quantizations : ["q8_0"];
  if (quantizations.join() !== "q8_0") forgeline.quantizations = quantizations;
  if (!v.deploy) forgeline.deploy = { enabled: false };
  else {
    const deploy = {};
    if (v.deploy_quantization && v.deploy_quantization !== "q8_0") deploy.quantization = v.deploy_quantization;
    // "adapter" is the gateway's default: only the other choice is sent.
    if (v.deploy_serve === "merged") deploy.serve = "merged";
    if (Object.keys(deploy).length) forgeline.deploy = deploy;
  }
  // Evaluation: graders other than the defaults (with a validation file it runs anyway), and a
  // gate on one of them.
  const graders = v.graders ?? [];
  if (graders.length && graders.join() !== DEFAULT_GRADERS.join()) forgeline.eval = { graders };
  const gate = numberOrAuto(v.require_min, false);
  if (v.deploy && gate !== "auto" && v.require_grader) {
    forgeline.deploy = { ...(forgeline.deploy ?? {}), require: { grader: v.require_grader, min: gate } };
    // The gate's grader must be one the job scores.
    const scored = graders.length ? graders : DEFAULT_GRADERS;
    const needed = scored.includes(v.require_grader) ? scored : [...scored, v.require_grader];
    if (!v.validation_file || needed.join() !== DEFAULT_GRADERS.join()) forgeline.eval = { graders: needed };
  }
  if (Object.keys(forgeline).length) body.forgeline = forgeline;
  return body;
}

/**
 * A Python literal for a JSON value: on one line if it fits in `width` from `column`, else one
 * item a line, indented from `level`.
 */
export function python(value, level = 0, column = level, width = WIDTH) {
  const flat = pythonFlat(value);
  if (column + flat.length + 1 <= width || value === null || typeof value !== "object") return flat;
  const pad = " ".repeat(level + 4);
  const close = " ".repeat(level);
  if (Array.isArray(value)) {
    const items = value.map((item) => `${pad}${python(item, level + 4, level + 4, width)},`);
    return `[\n${items.join("\n")}\n${close}]`;
  }
  const items = Object.entries(value).map(([key, item]) => {
    const name = JSON.stringify(key);
    return `${pad}${name}: ${python(item, level + 4, level + 4 + name.length + 2, width)},`;
  });
  return `{\n${items.join("\n")}\n${close}}`;
}

function pythonFlat(value) {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number" || typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(pythonFlat).join(", ")}]`;
  return `{${Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${pythonFlat(v)}`).join(", ")}}`;
}

/** The OpenAI SDK code that creates the job `body` on the gateway at `origin`. */
export function sdkSnippet(body, { origin, keyed }) {
  const args = [];
  const order = ["model", "training_file", "validation_file", "suffix", "seed", "method"];
  for (const name of order) {
    if (body[name] === undefined) continue;
    const value = name === "training_file" && !body[name] ? "FILE_ID" : body[name];
    args.push(`    ${name}=${python(value, 4, 4 + name.length + 1)},`);
  }
  if (body.forgeline) {
    args.push(`    extra_body=${python({ forgeline: body.forgeline }, 4, 4 + "extra_body=".length)},`);
  }
  const key = keyed ? 'os.environ["FORGELINE_API_KEY"]' : '"local"';
  return [
    ...(keyed ? ["import os", ""] : []),
    "from openai import OpenAI",
    "",
    keyed ? "# An API key with the admin scope." : "# This gateway needs no API key: any string will do.",
    `client = OpenAI(base_url="${origin}/v1", api_key=${key})`.length <= WIDTH
      ? `client = OpenAI(base_url="${origin}/v1", api_key=${key})`
      : `client = OpenAI(\n    base_url="${origin}/v1",\n    api_key=${key},\n)`,
    "",
    "job = client.fine_tuning.jobs.create(",
    ...args,
    ")",
    "print(job.id, job.status)",
  ].join("\n");
}

// --- the same training as a `forgeline train` YAML --------------------------------------------

/**
 * The fine-tuning types' base learning rates (LLaMA-Factory's example configs; the gateway's
 * fine_tuning/auto.py): a multiplier set in the form scales these. What "auto" becomes is the
 * gateway's to say (POST /v1/fine_tuning/hyperparameters), never guessed here.
 */
const BASE_LEARNING_RATES = { lora: 1e-4, qlora: 1e-4, full: 1e-5, freeze: 1e-5 };
/** QLoRA's base is loaded in 4 bits (the trainer's default for FINETUNING_TYPE_QLORA). */
const QLORA_BITS = 4;
const YAML_FILE = "finetune.yaml";

/** A YAML scalar: plain when YAML reads it back as this string, else double-quoted (JSON). */
function yamlString(value) {
  const text = String(value);
  const plain = /^[A-Za-z_][\w./@-]*(:[\w./@-]+)*$/.test(text) && !/^(true|false|yes|no|on|off|null|y|n|~)$/i.test(text);
  return plain ? text : JSON.stringify(text);
}

/** A YAML number that PyYAML reads as one (its floats need a dot, and a signed exponent). */
function yamlNumber(value) {
  if (Number.isInteger(value) && Math.abs(value) < 1e21) return String(value);
  const text = String(value);
  const match = /^(-?\d+)(\.\d+)?e([+-]\d+)$/.exec(text);
  if (match) return `${match[1]}${match[2] ?? ".0"}e${match[3]}`;
  return text.includes(".") ? text : `${text}.0`;
}

/** A word for a shell command line: quoted when it holds anything but safe characters. */
function shellWord(text) {
  return /^[\w./:@=,+-]+$/.test(text) ? text : `'${text.replace(/'/g, "'\\''")}'`;
}

/**
 * The LLaMA-Factory YAML that `forgeline train` takes for the job `body` (buildRequest's), the
 * commands that run it as comments: `files` maps file ids to their names. The hyperparameters
 * are those the gateway would train with (fine_tuning/plan.py); GGUF conversion and deployment,
 * which the gateway's job does by itself, are the `forgeline convert` and `forgeline deploy`
 * commands after it.
 */
export function trainYaml(body, { files = {}, plan = null } = {}) {
  const options = body.forgeline ?? {};
  const type = options.finetuning_type ?? "lora";
  const methodType = body.method?.type ?? "supervised";
  const stage = options.stage ?? (methodType === "dpo" ? "dpo" : "sft");
  const hyper = body.method?.[methodType]?.hyperparameters ?? {};
  const base = body.model || "MODEL";
  const output = `${base.split("/").pop().split(":")[0]}-${body.suffix || "ft"}`.replace(/[^\w.-]/g, "-");

  const data = [`--data train=${shellWord(files[body.training_file] || "TRAIN.jsonl")}`];
  if (body.validation_file) data.push(`--data validation=${shellWord(files[body.validation_file] || "VALIDATION.jsonl")}`);
  const lines = [
    `# The same training for the forgeline CLI: save as ${YAML_FILE}, then`,
    `#   forgeline train ${YAML_FILE} \\`,
    ...data.map((option) => `#     ${option} \\`),
    `#     --output-model ${shellWord(output)}`,
    "",
    "### model",
    `model_name_or_path: ${yamlString(base)}`,
    "",
    "### method",
    `stage: ${stage}`,
    `finetuning_type: ${type === "qlora" ? "lora" : type}`,
  ];
  if (type === "qlora") lines.push(`quantization_bit: ${QLORA_BITS}`);
  if (type === "lora" || type === "qlora") {
    if (options.lora?.rank !== undefined) lines.push(`lora_rank: ${yamlNumber(options.lora.rank)}`);
    if (options.lora?.alpha !== undefined) lines.push(`lora_alpha: ${yamlNumber(options.lora.alpha)}`);
  }
  lines.push("", "### dataset", "dataset: train");
  if (body.validation_file) lines.push("eval_dataset: validation");
  lines.push("", "### train");
  if (plan) {
    // The gateway's answer for this very request: "auto" decided from the file and the model.
    for (const [name, value] of Object.entries(plan.arguments)) lines.push(`${name}: ${yamlNumber(value)}`);
  } else {
    const set = (name, value) =>
      lines.push(
        value === undefined
          ? `# ${name}: "auto", decided by the gateway from the training file and the model once both are chosen`
          : `${name}: ${yamlNumber(value)}`,
      );
    set("num_train_epochs", hyper.n_epochs);
    set("per_device_train_batch_size", hyper.batch_size);
    const multiplier = hyper.learning_rate_multiplier;
    set("learning_rate", multiplier === undefined ? undefined : BASE_LEARNING_RATES[type] * multiplier);
    if (stage === "dpo") set("pref_beta", hyper.beta);
  }
  if (body.seed !== undefined) lines.push(`seed: ${yamlNumber(body.seed)}`);

  const quantizations = options.quantizations ?? ["q8_0"];
  const deploy = options.deploy ?? {};
  lines.push(
    "",
    "# Then the GGUF files and the deployment, as the job would make them:",
    `#   forgeline convert ${shellWord(output)} --to ${quantizations.join(",")}`,
  );
  if (stage === "rm") lines[lines.length - 1] = "# A reward model is registered, not converted or deployed.";
  else if (deploy.enabled !== false) {
    if (deploy.serve !== "merged") {
      lines.push("# (its GGUF adapter on the base's llama.cpp deployment, --base, where it holds the merged model's quality; else:)");
    }
    lines.push(
      `#   forgeline deploy ${shellWord(output)} --backend llamacpp \\`,
      `#     --quantization ${deploy.quantization ?? "q8_0"}`,
    );
  }
  return `${lines.join("\n")}\n`;
}

// --- the page ---------------------------------------------------------------------------------

function field(label, control, hint = null, { id = control.id } = {}) {
  return h(
    "div",
    { class: "field" },
    h("label", { class: "label", for: id, text: label }),
    control,
    hint ? h("p", { class: "hint" }, hint) : null,
  );
}

function select(id, options, value) {
  return h(
    "select",
    { id, name: id },
    options.map(([optionValue, label]) => h("option", { value: optionValue, selected: optionValue === value }, label)),
  );
}

function autoNumber(id, { step = "1", min = null, placeholder = "auto" } = {}) {
  return h("input", { id, name: id, type: "number", inputmode: step === "1" ? "numeric" : "decimal", step, min, placeholder });
}

export default {
  title: "New fine-tune",
  nav: "new",
  async render({ root, signal, query: params, navigate, access }) {
    const model = h("input", { id: "ft-model", name: "model", required: true, list: "ft-model-list", autocomplete: "off", spellcheck: "false", placeholder: "a model in the registry, e.g. tiny-llama" });
    const modelList = h("datalist", { id: "ft-model-list" });
    const training = h("select", { id: "ft-training-file", name: "training_file", required: true }, h("option", { value: "", text: "Loading files…" }));
    const validation = h("select", { id: "ft-validation-file", name: "validation_file" }, h("option", { value: "", text: "None" }));
    const method = select("ft-method", METHODS.map(([v, l]) => [v, l]), params.get("method") || "supervised");
    const methodHint = h("p", { class: "hint" });
    const type = select("ft-type", TYPES, "lora");
    const epochs = autoNumber("ft-epochs", { min: "1" });
    const batch = autoNumber("ft-batch-size", { min: "1" });
    const lr = autoNumber("ft-lr", { step: "any", min: "0" });
    const beta = autoNumber("ft-beta", { step: "any", min: "0" });
    const betaField = field("DPO beta", beta, "How far the model may move from the base.");
    const rank = autoNumber("ft-lora-rank", { min: "1" });
    const alpha = autoNumber("ft-lora-alpha", { step: "any", min: "0" });
    const loraFields = h("div", { class: "form-row" }, field("LoRA rank", rank, "auto: the trainer's default (8)."), field("LoRA alpha", alpha, "auto: twice the rank."));
    const quantBoxes = QUANTIZATIONS.map((q) => h("input", { type: "checkbox", name: "quantization", value: q, id: `ft-quant-${q}`, checked: q === "q8_0" }));
    const deploy = h("input", { type: "checkbox", id: "ft-deploy", name: "deploy", checked: true });
    const deployQuant = h("select", { id: "ft-deploy-quantization", name: "deploy_quantization" });
    const deployServe = h(
      "select",
      { id: "ft-deploy-serve", name: "deploy_serve" },
      h("option", { value: "adapter", text: "as an adapter on the base's deployment", selected: true }),
      h("option", { value: "merged", text: "merged, on a process of its own" }),
    );
    const graderBoxes = GRADERS.map((g) => h("input", { type: "checkbox", name: "grader", value: g, id: `ft-grader-${g}`, checked: DEFAULT_GRADERS.includes(g) }));
    const requireGrader = h("select", { id: "ft-require-grader", name: "require_grader" }, GRADERS.map((g) => h("option", { value: g, text: g })));
    const requireMin = h("input", { id: "ft-require-min", name: "require_min", type: "number", min: "0", max: "1", step: "any", placeholder: "no gate" });
    const suffix = h("input", { id: "ft-suffix", name: "suffix", maxlength: "64", pattern: "[A-Za-z0-9_\\-]*", placeholder: "e.g. support-bot", autocomplete: "off", spellcheck: "false" });
    const seed = h("input", { id: "ft-seed", name: "seed", type: "number", min: "0", step: "1", placeholder: "random" });
    const code = h("code", { id: "sdk-snippet", class: "language-python" });
    const problems = h("div", { class: "stack" });
    const submit = h("button", { type: "submit", class: "button primary", id: "ft-submit", text: "Start fine-tuning" });

    const form = h(
      "form",
      { class: "form", id: "new-job-form", novalidate: true },
      card(
        "Model and data",
        {},
        field("Base model", h("div", {}, model, modelList), "A model registered in Forgeline's registry.", { id: "ft-model" }),
        h(
          "div",
          { class: "form-row" },
          field("Training file", training, h("span", {}, "Upload one on the ", link("/console/datasets", "Datasets"), " page.")),
          field("Validation file", validation, "Optional: its loss is plotted as validation loss."),
        ),
      ),
      card(
        "Method",
        {},
        h("div", { class: "form-row" }, h("div", {}, field("Training method", method), methodHint), field("Fine-tuning type", type)),
      ),
      card(
        "Hyperparameters",
        {},
        h("p", { class: "hint" }, "Leave a field empty for ", h("strong", { text: "auto" }), ": Forgeline picks it from the data."),
        h(
          "div",
          { class: "form-row form-row-3" },
          field("Epochs", epochs),
          field("Batch size", batch),
          field("Learning rate multiplier", lr),
        ),
        betaField,
        loraFields,
      ),
      card(
        "Evaluation",
        {},
        h("p", { class: "hint", text: "With a validation file the base model, the adapter and each GGUF answer its prompts before anything is served, scored by these graders: the job's quality card." }),
        h(
          "fieldset",
          { class: "field" },
          h("legend", { class: "label", text: "Graders" }),
          h("div", { class: "checks" }, graderBoxes.map((box) => h("label", { class: "check" }, box, h("span", { text: box.value })))),
        ),
        h("div", { class: "form-row" }, field("Deploy only if", requireGrader), field("scores at least", requireMin, "0 to 1, on the served GGUF; empty: deploy whatever it scores.")),
      ),
      card(
        "Output",
        {},
        h(
          "fieldset",
          { class: "field" },
          h("legend", { class: "label", text: "GGUF quantizations" }),
          h("div", { class: "checks" }, quantBoxes.map((box) => h("label", { class: "check" }, box, h("span", { text: box.value })))),
          h("p", { class: "hint", text: "Each is made from the merged model's F16 GGUF and registered." }),
        ),
        h(
          "div",
          { class: "form-row" },
          h(
            "div",
            { class: "field" },
            h("label", { class: "check" }, deploy, h("span", { text: "Deploy the result on llama.cpp" })),
            field("Served quantization", deployQuant),
            field("Serve it", deployServe, "An adapter shares the base's process and memory with the base's other fine-tunes; it is used only where it holds the merged model's quality, else the job serves the merged GGUF and says why."),
          ),
          h("div", {}, field("Suffix", suffix, "Part of the model's name: ft:BASE:OWNER:SUFFIX:ID."), field("Seed", seed)),
        ),
      ),
      problems,
      h("div", { class: "actions" }, submit),
    );

    const snippetCard = card(
      "Same job from Python",
      { actions: h("span", { class: "copy-slot" }), class: "snippet-card" },
      h("p", { class: "hint", text: "The OpenAI SDK call this form makes, updated as you type." }),
      h("pre", { class: "code" }, code),
    );
    const yaml = h("code", { id: "train-yaml", class: "language-yaml" });
    const fileNames = {};
    const yamlCopy = copyButton(() => yaml.textContent);
    yamlCopy.setAttribute("aria-label", "Copy the forgeline train YAML");
    const yamlCard = card(
      "Same training with forgeline train",
      { actions: yamlCopy, class: "snippet-card" },
      h("p", { class: "hint" }, "The LLaMA-Factory YAML ", h("code", { text: "forgeline train" }), " takes for this job, updated as you type."),
      h("pre", { class: "code" }, yaml),
    );
    root.append(
      pageHeader("New fine-tune", "Creates an ordinary fine-tuning job: the same one the OpenAI SDK call beside it would."),
      h("div", { class: "split" }, form, h("aside", { class: "split-side" }, snippetCard, yamlCard)),
    );

    const values = () => ({
      model: model.value,
      training_file: training.value,
      validation_file: validation.value,
      method: method.value,
      finetuning_type: type.value,
      n_epochs: epochs.value,
      batch_size: batch.value,
      learning_rate_multiplier: lr.value,
      beta: beta.value,
      lora_rank: rank.value,
      lora_alpha: alpha.value,
      quantizations: quantBoxes.filter((b) => b.checked).map((b) => b.value),
      deploy: deploy.checked,
      graders: graderBoxes.filter((b) => b.checked).map((b) => b.value),
      require_grader: requireGrader.value,
      require_min: requireMin.value,
      deploy_quantization: deployQuant.value,
      deploy_serve: deployServe.value,
      suffix: suffix.value,
      seed: seed.value,
    });

    const snippet = () => sdkSnippet(buildRequest(values()), { origin: location.origin, keyed: access.mode === "key" });
    snippetCard.querySelector(".copy-slot").append(
      h("button", {
        type: "button",
        class: "button small ghost",
        text: "Copy",
        onclick: async (event) => {
          const button = event.currentTarget;
          try {
            await navigator.clipboard.writeText(snippet());
            button.textContent = "Copied";
          } catch {
            button.textContent = "Select and copy";
          }
          setTimeout(() => (button.textContent = "Copy"), 1500);
        },
      }),
    );

    const sync = () => {
      const chosen = quantBoxes.filter((b) => b.checked).map((b) => b.value);
      const served = [...chosen, "f16"];
      const previous = deployQuant.value || "q8_0";
      replace(deployQuant, served.map((q) => h("option", { value: q, selected: q === previous, text: q })));
      if (!served.includes(previous)) deployQuant.value = served[0];
      deployQuant.disabled = !deploy.checked;
      deployServe.disabled = !deploy.checked;
      betaField.hidden = method.value !== "dpo";
      loraFields.hidden = !["lora", "qlora"].includes(type.value);
      methodHint.textContent = METHODS.find(([v]) => v === method.value)?.[2] ?? "";
      code.textContent = snippet();
      const request = buildRequest(values());
      yaml.textContent = trainYaml(request, { files: fileNames, plan: planFor(request) });
      askForPlan(request);
    };

    // What "auto" becomes, asked of the gateway for the form's request (debounced; the newest
    // request wins), and the YAML redrawn with it.
    const plans = new Map();
    let planTimer = null;
    const planFor = (request) => plans.get(JSON.stringify(request)) ?? null;
    const askForPlan = (request) => {
      const key = JSON.stringify(request);
      clearTimeout(planTimer);
      if (!request.model || !request.training_file || plans.has(key)) return;
      planTimer = setTimeout(async () => {
        try {
          const plan = await api.post("/v1/fine_tuning/hyperparameters", request, { signal });
          plans.set(key, plan);
        } catch (error) {
          if (error.name === "AbortError") return;
          plans.set(key, null); // refused (an unknown model or file): the YAML says "auto"
        }
        if (JSON.stringify(buildRequest(values())) === key) {
          yaml.textContent = trainYaml(request, { files: fileNames, plan: plans.get(key) });
        }
      }, 300);
    };
    form.addEventListener("input", sync);
    form.addEventListener("change", sync);
    sync();

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const missing = [
        [model, "Choose the base model."],
        [training, "Choose a training file (upload one on the Datasets page)."],
      ].filter(([control]) => !control.value.trim());
      if (!suffix.checkValidity()) missing.push([suffix, "The suffix may hold only letters, digits, - and _."]);
      if (flagMissing(form, problems, missing)) return;
      submit.disabled = true;
      submit.textContent = "Starting…";
      try {
        const job = await api.post("/v1/fine_tuning/jobs", buildRequest(values()), { signal });
        navigate(`/console/jobs/${encodeURIComponent(job.id)}`);
      } catch (error) {
        if (error.name === "AbortError") return;
        const control = error.param ? form.querySelector(`[name="${CSS.escape(error.param.split(".")[0])}"]`) : null;
        control?.setAttribute("aria-invalid", "true");
        replace(problems, errorNotice(error, { title: "The job was not created." }));
        submit.disabled = false;
        submit.textContent = "Start fine-tuning";
      }
    });

    // Suggestions and choices from the API: deployed models' bases, uploaded files.
    const [models, files] = await Promise.allSettled([
      api.get("/v1/models", { signal }),
      api.get(`/v1/files${query({ purpose: "fine-tune", limit: 1000 })}`, { signal }),
    ]);
    if (models.status === "fulfilled") {
      const names = new Set();
      for (const m of models.value.data) {
        if (m.metadata?.base) names.add(m.metadata.base);
        else if (!m.id.startsWith("ft:") && m.endpoints.includes("/v1/chat/completions")) names.add(m.id);
      }
      replace(modelList, [...names].map((name) => h("option", { value: name })));
      if (!model.value && names.size) model.value = params.get("model") || [...names][0];
    }
    if (params.get("model")) model.value = params.get("model");
    if (files.status === "fulfilled") {
      for (const f of files.value.data) fileNames[f.id] = f.filename;
      const wanted = params.get("training_file") || "";
      const options = files.value.data.map((f) => h("option", { value: f.id, text: `${f.filename} · ${f.format ?? ""}${f.preference ? " pairs" : ""} · ${bytes(f.bytes)} · ${f.id}` }));
      replace(training, h("option", { value: "", text: options.length ? "Choose a training file" : "No file uploaded yet" }), options);
      replace(validation, h("option", { value: "", text: "None" }), options.map((o) => o.cloneNode(true)));
      if (files.value.data.some((f) => f.id === wanted)) training.value = wanted;
    } else {
      replace(training, h("option", { value: "", text: "Files could not be listed" }));
      problems.append(errorNotice(files.reason, { title: "The uploaded files could not be listed." }));
    }
    sync();
  },
};
