// One fine-tuning job, live: its stages, loss curve, learning rate and throughput, events,
// checkpoints and outputs; cancel while it runs, retry once it failed.

import { allJobEvents, api, query } from "../api.js";
import { LineChart } from "../chart.js";
import {
  badge,
  card,
  duration,
  errorNotice,
  facts,
  h,
  link,
  metric,
  mono,
  pageHeader,
  replace,
  table,
  timeAgo,
  when,
} from "../ui.js";
import { methodLabel } from "./jobs.js";

const STAGES = [
  ["validating_files", "Validating files"],
  ["training", "Training"],
  ["converting", "Converting to GGUF"],
  ["evaluating", "Evaluating"],
  ["deploying", "Deploying"],
  ["succeeded", "Succeeded"],
];
const ACTIVE = new Set(["validating_files", "queued", "running"]);
const SHOWN_EVENTS = 200;

/** A registry version (`model:N`), linked to its files and lineage on the Registry page. */
function version(reference) {
  const at = reference.lastIndexOf(":");
  const target = `/console/registry${query({ model: reference.slice(0, at), version: reference.slice(at + 1) })}`;
  return link(target, mono(reference), { "aria-label": `${reference} in the registry` });
}

/** The timeline's steps with their state: done, current, failed, cancelled or pending. */
export function stageStates(job) {
  const stage = job.forgeline?.stage ?? job.status;
  // A job without a validation file or forgeline.eval is not evaluated: no such step.
  const stages = STAGES.filter(([name]) => name !== "evaluating" || job.forgeline?.evaluated);
  const names = stages.map(([name]) => name);
  let reached;
  let ending = null;
  if (stage === "failed") {
    reached = names.indexOf(job.forgeline?.failed_stage ?? "validating_files");
    ending = "failed";
  } else if (stage === "cancelled") {
    reached = -1;
    ending = "cancelled";
  } else {
    reached = names.indexOf(stage);
  }
  return stages.map(([name, label], index) => {
    let state = "pending";
    if (ending === "cancelled") state = "cancelled";
    else if (index < reached) state = "done";
    else if (index === reached) state = ending === "failed" ? "failed" : name === "succeeded" ? "done" : "current";
    return { name, label, state };
  });
}

function timeline(job) {
  const steps = stageStates(job);
  return h(
    "ol",
    { class: "timeline", "aria-label": "Pipeline stages" },
    steps.map((step) =>
      h(
        "li",
        { class: `step step-${step.state}`, dataset: { stage: step.name, state: step.state } },
        h("span", { class: "step-marker", "aria-hidden": "true" }),
        h("span", { class: "step-label", text: step.label }),
        h("span", { class: "step-state", text: step.state === "current" ? "in progress" : step.state }),
      ),
    ),
  );
}

/** Per step, the last value of each metric the job's metrics events carried. */
export function metricsByStep(events) {
  const steps = new Map();
  for (const event of events) {
    if (event.type !== "metrics" || !event.data || typeof event.data.step !== "number") continue;
    steps.set(event.data.step, { ...(steps.get(event.data.step) || {}), ...event.data });
  }
  return [...steps.entries()].sort((a, b) => a[0] - b[0]).map(([step, data]) => ({ ...data, step }));
}

function series(rows, field) {
  return rows.filter((r) => typeof r[field] === "number").map((r) => ({ x: r.step, y: r[field] }));
}

function progressTile(label, value, note = null) {
  return h(
    "div",
    { class: "tile tile-compact" },
    h("div", { class: "tile-label", text: label }),
    h("div", { class: "tile-value", text: value }),
    note ? h("div", { class: "tile-note" }, note) : null,
  );
}

function progressBar(fraction) {
  const bar = h("div", { class: "progress-bar" });
  bar.style.width = `${(fraction * 100).toFixed(1)}%`;
  return h(
    "div",
    { class: "progress", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": String(Math.round(fraction * 100)) },
    bar,
  );
}

function levelBadge(level) {
  return h("span", { class: `level level-${level}`, text: level });
}

export default {
  title: "Fine-tuning job",
  nav: "jobs",
  async render({ root, params, signal, poll }) {
    const [jobId] = params;
    const header = h("div");
    const alerts = h("div", { class: "stack" });
    const stages = h("div");
    const tiles = h("div", { class: "tiles tiles-6" });
    const loss = new LineChart({ label: "Loss", height: 280, empty: "The loss curve appears with the first training step." });
    const rate = new LineChart({ label: "Learning rate", height: 160, empty: "No learning rate reported yet." });
    const speed = new LineChart({ label: "Tokens per second", height: 160, empty: "No throughput reported yet.", format: (v) => metric(v) });
    const logToggle = h("input", { type: "checkbox", id: "loss-log" });
    logToggle.addEventListener("change", () => loss.setLog(logToggle.checked));
    const eventsBody = h("div");
    const showMetrics = h("input", { type: "checkbox", id: "show-metrics" });
    const details = h("div");
    const checkpoints = h("div");
    const quality = h("div");
    const qualityCard = card("Quality card", { class: "card-quality" }, quality);
    qualityCard.hidden = true;
    signal.addEventListener("abort", () => [loss, rate, speed].forEach((c) => c.destroy()));

    root.append(
      header,
      alerts,
      card("Stages", { class: "card-stages" }, stages),
      tiles,
      card(
        "Loss",
        {
          actions: h("label", { class: "toggle" }, logToggle, h("span", { text: "Log scale" })),
          class: "card-chart",
        },
        loss.el,
      ),
      h("div", { class: "grid-2" }, card("Learning rate", {}, rate.el), card("Tokens per second", {}, speed.el)),
      h(
        "div",
        { class: "grid-2 grid-wide-left" },
        card(
          "Events",
          { actions: h("label", { class: "toggle" }, showMetrics, h("span", { text: "Show step metrics" })) },
          eventsBody,
        ),
        card("Details", {}, details),
      ),
      qualityCard,
      card("Checkpoints", {}, checkpoints),
    );

    const events = [];
    const known = new Set();
    let job = null;
    let confirming = false;
    let actionError = null;
    let busy = false;
    let ticks = 0;
    let lastPoll = 0;

    const act = async (verb) => {
      busy = true;
      actionError = null;
      drawHeader();
      try {
        job = await api.post(`/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/${verb}`, undefined, { signal });
      } catch (error) {
        if (error.name === "AbortError") return;
        actionError = error;
      } finally {
        busy = false;
        confirming = false;
      }
      lastPoll = 0;
      drawAll();
      refresh.now();
    };

    const drawHeader = () => {
      if (!job) return;
      const active = ACTIVE.has(job.status);
      const actions = [];
      if (active && !confirming) {
        actions.push(h("button", { type: "button", class: "button danger", id: "cancel-job", text: "Cancel job", disabled: busy, onclick: () => { confirming = true; drawHeader(); } }));
      }
      if (job.status === "failed") {
        actions.push(h("button", { type: "button", class: "button", id: "retry-job", text: busy ? "Retrying…" : "Retry from the failed stage", disabled: busy, onclick: () => act("retry") }));
      }
      if (job.status === "succeeded" && job.fine_tuned_model) {
        actions.push(link(`/console/playground${query({ model: job.fine_tuned_model, compare: job.model })}`, "Chat with it", { class: "button primary" }));
      }
      replace(
        header,
        pageHeader(
          h("span", { class: "title-with-badge" }, "Job ", mono(job.id), badge(job.status)),
          h("span", {}, mono(job.model), " → ", job.fine_tuned_model ? mono(job.fine_tuned_model) : h("span", { class: "muted", text: "fine-tuned model (once it succeeds)" })),
          actions,
        ),
        confirming
          ? h(
              "div",
              { class: "alert alert-warn confirm", role: "alertdialog", "aria-label": "Cancel this job?" },
              h("span", { class: "alert-text", text: "Cancel this job? What it made so far is deleted." }),
              h("span", { class: "confirm-actions" },
                h("button", { type: "button", class: "button danger", id: "confirm-cancel", text: busy ? "Cancelling…" : "Yes, cancel it", disabled: busy, onclick: () => act("cancel") }),
                h("button", { type: "button", class: "button ghost", text: "Keep it running", disabled: busy, onclick: () => { confirming = false; drawHeader(); } }),
              ),
            )
          : null,
      );
    };

    const drawAll = () => {
      if (!job) return;
      document.title = `${job.id} · Forgeline Console`;
      drawHeader();
      replace(
        alerts,
        actionError ? errorNotice(actionError) : null,
        job.error
          ? h(
              "div",
              { class: "alert alert-error", role: "alert" },
              h("strong", { text: `Failed${job.forgeline?.failed_stage ? ` while ${job.forgeline.failed_stage.replace(/_/g, " ")}` : ""}` }),
              h("span", { class: "alert-text", text: job.error.message }),
              job.error.code ? h("code", { class: "mono", text: job.error.code }) : null,
            )
          : null,
      );
      replace(
        stages,
        timeline(job),
        h(
          "p",
          { class: "hint" },
          job.forgeline?.trainer_state ? `Trainer: ${job.forgeline.trainer_state}. ` : "",
          job.estimated_finish ? `Estimated finish ${when(job.estimated_finish)}. ` : "",
          job.finished_at ? `Finished ${when(job.finished_at)}, after ${duration(job.finished_at - job.created_at)}.` : `Running for ${duration(Date.now() / 1000 - job.created_at)}.`,
        ),
      );

      const rows = metricsByStep(events);
      const last = rows[rows.length - 1] || {};
      const lastWith = (field) => [...rows].reverse().find((r) => typeof r[field] === "number")?.[field];
      const total = last.total_steps;
      const fraction = total ? Math.min(1, last.step / total) : 0;
      replace(
        tiles,
        h(
          "div",
          { class: "tile tile-compact tile-progress" },
          h("div", { class: "tile-label", text: "Step" }),
          h("div", { class: "tile-value", text: rows.length ? `${last.step}${total ? ` / ${total}` : ""}` : "—" }),
          progressBar(fraction),
        ),
        progressTile("Epoch", typeof last.epoch === "number" ? metric(last.epoch) : "—"),
        progressTile("Train loss", metric(lastWith("train_loss"))),
        progressTile("Valid loss", metric(lastWith("valid_loss"))),
        progressTile("Learning rate", metric(lastWith("learning_rate"))),
        progressTile("Tokens / s", metric(lastWith("tokens_per_second"))),
      );
      loss.set([
        { name: "train loss", tone: "train", points: series(rows, "train_loss") },
        { name: "valid loss", tone: "valid", points: series(rows, "valid_loss"), dots: true },
      ]);
      rate.set([{ name: "learning rate", tone: "lr", points: series(rows, "learning_rate") }]);
      speed.set([{ name: "tokens/s", tone: "tps", points: series(rows, "tokens_per_second") }]);

      drawEvents();
      drawDetails();
      drawQuality();
    };

    const drawEvents = () => {
      const metricsCount = events.filter((e) => e.type === "metrics").length;
      showMetrics.nextElementSibling.textContent = `Show step metrics (${metricsCount})`;
      const shown = events.filter((e) => showMetrics.checked || e.type !== "metrics").slice(-SHOWN_EVENTS).reverse();
      replace(
        eventsBody,
        shown.length
          ? h(
              "ol",
              { class: "events", "aria-live": "polite" },
              shown.map((e) =>
                h(
                  "li",
                  { class: `event event-${e.level} event-${e.type}`, dataset: { id: e.id } },
                  h("time", { class: "event-time", datetime: new Date(e.created_at * 1000).toISOString(), title: when(e.created_at), text: new Date(e.created_at * 1000).toLocaleTimeString() }),
                  levelBadge(e.level),
                  h("span", { class: "event-message", text: e.message }),
                ),
              ),
            )
          : h("p", { class: "empty", text: "No events yet." }),
      );
    };
    showMetrics.addEventListener("change", drawEvents);

    const drawDetails = () => {
      const f = job.forgeline || {};
      const outputs = f.outputs || {};
      const hyper = job.hyperparameters || {};
      const ggufs = Object.entries(outputs.gguf || {});
      replace(
        details,
        facts([
          ["Base model", mono(job.model)],
          ["Method", methodLabel(job)],
          ["Training file", mono(job.training_file)],
          ["Validation file", job.validation_file ? mono(job.validation_file) : "—"],
          ["Epochs", String(hyper.n_epochs ?? "—")],
          ["Batch size", String(hyper.batch_size ?? "—")],
          ["Learning rate multiplier", String(hyper.learning_rate_multiplier ?? "—")],
          ["Seed", String(job.seed)],
          ["Created", h("span", {}, when(job.created_at), " (", timeAgo(job.created_at), ")")],
          ["Trained tokens", job.trained_tokens ? job.trained_tokens.toLocaleString() : "—"],
          ["Trainer job", f.trainer_job_id ? mono(f.trainer_job_id) : "—"],
        ]),
        h("h3", { class: "subhead", text: "Outputs" }),
        outputs.adapter || outputs.merged || ggufs.length || outputs.deployment
          ? facts([
              ["Adapter", outputs.adapter ? version(outputs.adapter) : undefined],
              ["Merged model", outputs.merged ? version(outputs.merged) : undefined],
              ["Trained model", outputs.trained_model ? version(outputs.trained_model) : undefined],
              ...ggufs.map(([type, ref]) => [`GGUF ${type}`, version(ref)]),
              ["GGUF adapter", outputs.gguf_adapter ? version(outputs.gguf_adapter) : undefined],
              ["Deployment", outputs.deployment ? link(`/console/playground${query({ model: outputs.deployment })}`, mono(outputs.deployment)) : undefined],
            ])
          : h("p", { class: "empty", text: "Nothing registered yet." }),
      );
    };

    // The evaluation's scores per artifact (forgeline.outputs.quality), and the gate's verdict.
    const drawQuality = () => {
      const outputs = job.forgeline?.outputs || {};
      const lines = outputs.quality || [];
      qualityCard.hidden = !lines.length && !outputs.gate;
      if (qualityCard.hidden) return;
      const graders = [...new Set(lines.flatMap((line) => Object.keys(line.scores || {})))];
      replace(
        quality,
        outputs.gate
          ? h(
              "p",
              { class: `gate gate-${outputs.gate}`, dataset: { gate: outputs.gate } },
              h("strong", { text: outputs.gate === "met" ? "Deployed: " : "Not deployed: " }),
              outputs.gate_reason || "",
            )
          : null,
        table(
          [
            { label: "Artifact", cell: (line) => line.artifact },
            ...graders.map((grader) => ({
              label: grader,
              cell: (line) => (line.scores?.[grader] === undefined ? "—" : metric(line.scores[grader])),
              class: "num",
            })),
            { label: "Rows", cell: (line) => (line.error ? line.error : String(line.rows)), class: "num" },
            { label: "Version", cell: (line) => (line.version ? mono(line.version) : "—") },
          ],
          lines,
          { empty: "Nothing was scored." },
        ),
      );
    };

    const loadCheckpoints = async () => {
      try {
        const listed = await api.get(`/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/checkpoints${query({ limit: 100 })}`, { signal });
        replace(
          checkpoints,
          table(
            [
              { label: "Step", cell: (c) => String(c.step_number), class: "num" },
              { label: "Train loss", cell: (c) => metric(c.metrics?.train_loss), class: "num" },
              { label: "Valid loss", cell: (c) => metric(c.metrics?.valid_loss), class: "num" },
              { label: "Saved", cell: (c) => timeAgo(c.created_at) },
              { label: "Checkpoint", cell: (c) => mono(c.fine_tuned_model_checkpoint, { max: 60 }) },
            ],
            listed.data,
            { empty: "No checkpoint saved yet." },
          ),
        );
      } catch (error) {
        if (error.name === "AbortError") throw error;
        replace(checkpoints, errorNotice(error));
      }
    };

    const refresh = poll(async () => {
      const now = Date.now();
      const active = !job || ACTIVE.has(job.status);
      if (!active && now - lastPoll < 15000) return; // a finished job changes only on retry
      lastPoll = now;
      try {
        job = await api.get(`/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}`, { signal });
        const fresh = await allJobEvents(jobId, { signal, known });
        for (const event of fresh) {
          known.add(event.id);
          events.push(event);
        }
      } catch (error) {
        if (error.name === "AbortError") throw error;
        if (!job || error.status === 404) {
          replace(header, pageHeader("Fine-tuning job", mono(jobId)));
          replace(alerts, errorNotice(error), h("p", {}, link("/console/jobs", "Back to the jobs")));
        } else {
          replace(alerts, errorNotice(error, { title: "Could not refresh this job." }));
        }
        return;
      }
      drawAll();
      if (ticks % 3 === 0 || !ACTIVE.has(job.status)) await loadCheckpoints();
      ticks += 1;
    }, 2000);
  },
};
