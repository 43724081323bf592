// Fine-tuning jobs: every job, newest first, refreshed while any runs.

import { api, query } from "../api.js";
import { badge, card, duration, errorNotice, h, link, mono, pageHeader, replace, table, timeAgo } from "../ui.js";

const PAGE = 20;

export function methodLabel(job) {
  const stage = job.forgeline?.training_stage;
  const type = job.forgeline?.finetuning_type;
  const method = stage && stage !== "sft" ? stage.toUpperCase() : job.method?.type === "dpo" ? "DPO" : "SFT";
  return type ? `${method} · ${type}` : method;
}

export default {
  title: "Fine-tuning jobs",
  nav: "jobs",
  render({ root, signal, poll }) {
    const body = h("div");
    const more = h("div", { class: "actions" });
    root.append(
      pageHeader(
        "Fine-tuning jobs",
        "Every job the gateway runs: training, GGUF conversion and deployment, newest first.",
        link("/console/jobs/new", "New fine-tune", { class: "button primary" }),
      ),
      card(null, {}, body, more),
    );
    let pages = 1;

    const load = async () => {
      const jobs = [];
      let after;
      let hasMore = false;
      try {
        for (let page = 0; page < pages; page += 1) {
          const listed = await api.get(`/v1/fine_tuning/jobs${query({ limit: PAGE, after })}`, { signal });
          jobs.push(...listed.data);
          hasMore = listed.has_more;
          if (!hasMore || !listed.data.length) break;
          after = listed.data[listed.data.length - 1].id;
        }
      } catch (error) {
        if (error.name === "AbortError") throw error;
        replace(body, errorNotice(error));
        replace(more);
        return;
      }
      replace(
        body,
        table(
          [
            { label: "Job", cell: (j) => link(`/console/jobs/${encodeURIComponent(j.id)}`, mono(j.id)) },
            { label: "Status", cell: (j) => badge(j.status) },
            { label: "Stage", cell: (j) => (j.forgeline?.stage ?? "—").replace(/_/g, " ") },
            { label: "Base model", cell: (j) => j.model },
            { label: "Method", cell: (j) => methodLabel(j) },
            { label: "Fine-tuned model", cell: (j) => (j.fine_tuned_model ? mono(j.fine_tuned_model, { max: 44 }) : h("span", { class: "muted", text: "—" })) },
            { label: "Created", cell: (j) => timeAgo(j.created_at) },
            {
              label: "Took",
              class: "num",
              cell: (j) => duration((j.finished_at || Date.now() / 1000) - j.created_at),
            },
          ],
          jobs,
          { empty: h("span", {}, "No fine-tuning job yet. ", link("/console/jobs/new", "Start one"), ".") },
        ),
      );
      replace(
        more,
        hasMore
          ? h("button", {
              type: "button",
              class: "button ghost",
              text: "Show older jobs",
              onclick: () => {
                pages += 1;
                refresh.now();
              },
            })
          : null,
      );
    };
    const refresh = poll(load, 5000);
  },
};
