// Playground: chat with a deployed model, streamed token by token; or ask two models the same
// thing side by side (base against fine-tuned, Q8_0 against Q4_K_M).

import { api, streamChat } from "../api.js";
import { card, describe, errorNotice, h, metric, pageHeader, replace } from "../ui.js";

const CHAT = "/v1/chat/completions";

function column(slot) {
  const select = h("select", { id: `model-${slot}`, name: `model-${slot}`, "aria-label": slot === "a" ? "Model" : "Model to compare with" });
  const messages = h("div", { class: "messages", "aria-live": "polite" });
  const stats = h("span", { class: "column-stats" });
  const el = h(
    "section",
    { class: "chat-column", dataset: { slot } },
    h("div", { class: "column-head" }, h("label", { class: "column-label", for: `model-${slot}`, text: slot === "a" ? "Model" : "Compare with" }), select, stats),
    messages,
  );
  return { slot, el, select, messages, stats, history: [] };
}

function bubble(role, text = "") {
  return h(
    "div",
    { class: `message ${role}`, dataset: { role, state: role === "assistant" ? "streaming" : "done" } },
    h("div", { class: "message-role", text: role === "user" ? "You" : "Assistant" }),
    h("div", { class: "message-text", text }),
  );
}

export default {
  title: "Playground",
  nav: "playground",
  async render({ root, signal, query }) {
    const a = column("a");
    const b = column("b");
    const compare = h("input", { type: "checkbox", id: "compare", role: "switch" });
    const system = h("textarea", { id: "system-prompt", rows: "3", placeholder: "Optional: how the assistant should behave." });
    const temperature = h("input", { id: "temperature", type: "range", min: "0", max: "2", step: "0.05", value: "0.7" });
    const temperatureValue = h("output", { for: "temperature", class: "range-value", text: "0.7" });
    const topP = h("input", { id: "top-p", type: "range", min: "0.05", max: "1", step: "0.05", value: "1" });
    const topPValue = h("output", { for: "top-p", class: "range-value", text: "1" });
    const maxTokens = h("input", { id: "max-tokens", type: "number", min: "1", max: "32768", step: "1", value: "256" });
    const prompt = h("textarea", { id: "prompt", rows: "2", placeholder: "Ask something…", title: "Enter sends; Shift+Enter starts a new line", "aria-label": "Message" });
    const send = h("button", { type: "submit", class: "button primary", id: "send", text: "Send" });
    const stop = h("button", { type: "button", class: "button ghost", id: "stop", text: "Stop", hidden: true });
    const clear = h("button", { type: "button", class: "button ghost", id: "clear", text: "Clear" });
    const notice = h("div", { class: "stack" });
    const columns = h("div", { class: "chat-columns" }, a.el, b.el);

    temperature.addEventListener("input", () => (temperatureValue.textContent = temperature.value));
    topP.addEventListener("input", () => (topPValue.textContent = topP.value));

    const composer = h("form", { class: "composer", id: "composer" }, prompt, h("div", { class: "composer-actions" }, clear, stop, send));
    root.append(
      pageHeader("Playground", "Chat with any deployed model, streamed as it writes; compare two models on the same prompt."),
      notice,
      h(
        "div",
        { class: "playground" },
        h(
          "aside",
          { class: "playground-settings" },
          card(
            "Settings",
            {},
            h("label", { class: "check switch" }, compare, h("span", { text: "Side by side" })),
            h("p", { class: "hint", text: "Ask two models the same question: base against fine-tuned." }),
            h("div", { class: "field" }, h("label", { class: "label", for: "system-prompt", text: "System prompt" }), system),
            h("div", { class: "field" }, h("label", { class: "label", for: "temperature" }, "Temperature ", temperatureValue), temperature),
            h("div", { class: "field" }, h("label", { class: "label", for: "top-p" }, "Top p ", topPValue), topP),
            h("div", { class: "field" }, h("label", { class: "label", for: "max-tokens", text: "Max tokens" }), maxTokens),
          ),
        ),
        h("div", { class: "playground-chat card" }, columns, composer),
      ),
    );

    const setMode = () => {
      b.el.hidden = !compare.checked;
      columns.classList.toggle("compare", compare.checked);
    };
    compare.addEventListener("change", setMode);

    let models = [];
    try {
      const listed = await api.get("/v1/models", { signal });
      models = listed.data.filter((m) => m.endpoints.includes(CHAT)).map((m) => m.id);
    } catch (error) {
      if (error.name === "AbortError") return;
      notice.append(errorNotice(error, { title: "The models could not be listed." }));
    }
    if (!models.length && notice.childElementCount === 0) {
      notice.append(h("div", { class: "alert alert-warn", role: "status" }, h("span", { class: "alert-text", text: "No chat model is deployed. Deploy one (forgeline deploy) or fine-tune one first." })));
    }
    for (const col of [a, b]) {
      replace(col.select, models.map((id) => h("option", { value: id, text: id })));
    }
    const wanted = query.get("model");
    const other = query.get("compare");
    if (wanted && models.includes(wanted)) a.select.value = wanted;
    if (other && models.includes(other)) {
      b.select.value = other;
      compare.checked = true;
    } else {
      b.select.value = models.find((m) => m !== a.select.value) ?? models[0] ?? "";
    }
    setMode();

    for (const col of [a, b]) {
      col.select.addEventListener("change", () => {
        col.history = [];
        replace(col.messages);
        replace(col.stats);
      });
    }

    let running = null;

    const ask = async (col, text, controller) => {
      col.history.push({ role: "user", content: text });
      col.messages.append(bubble("user", text));
      const reply = bubble("assistant");
      const out = reply.querySelector(".message-text");
      col.messages.append(reply);
      reply.scrollIntoView({ block: "nearest" });
      const messages = system.value.trim() ? [{ role: "system", content: system.value.trim() }, ...col.history] : [...col.history];
      const started = performance.now();
      let first = null;
      let usage = null;
      let answer = "";
      try {
        for await (const chunk of streamChat(
          {
            model: col.select.value,
            messages,
            temperature: Number(temperature.value),
            top_p: Number(topP.value),
            max_tokens: Number(maxTokens.value) || 256,
          },
          { signal: controller.signal },
        )) {
          if (chunk.usage) usage = chunk.usage;
          const delta = chunk.choices?.[0]?.delta?.content;
          if (delta) {
            if (first === null) first = performance.now();
            answer += delta;
            out.textContent = answer;
          }
        }
        reply.dataset.state = "done";
      } catch (error) {
        reply.dataset.state = error.name === "AbortError" ? "stopped" : "error";
        if (error.name !== "AbortError") reply.append(h("div", { class: "message-error", role: "alert", text: describe(error) }));
      }
      if (!answer && reply.dataset.state === "done") out.append(h("span", { class: "muted", text: "(empty answer)" }));
      col.history.push({ role: "assistant", content: answer });
      const seconds = (performance.now() - started) / 1000;
      const tokens = usage?.completion_tokens;
      replace(
        col.stats,
        first !== null ? `first token ${Math.round(first - started)} ms` : "",
        tokens ? ` · ${tokens} tokens · ${metric(tokens / seconds)} tok/s` : "",
      );
    };

    composer.addEventListener("submit", async (event) => {
      event.preventDefault();
      const text = prompt.value.trim();
      if (!text || running) return;
      const targets = compare.checked ? [a, b] : [a];
      if (targets.some((col) => !col.select.value)) return;
      prompt.value = "";
      const controller = new AbortController();
      signal.addEventListener("abort", () => controller.abort(), { once: true });
      running = controller;
      send.disabled = true;
      stop.hidden = false;
      try {
        await Promise.all(targets.map((col) => ask(col, text, controller)));
      } finally {
        running = null;
        send.disabled = false;
        stop.hidden = true;
        prompt.focus();
      }
    });
    prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        composer.requestSubmit();
      }
    });
    stop.addEventListener("click", () => running?.abort());
    clear.addEventListener("click", () => {
      running?.abort();
      for (const col of [a, b]) {
        col.history = [];
        replace(col.messages);
        replace(col.stats);
      }
    });
  },
};
