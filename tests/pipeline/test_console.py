"""The console against the whole stack, in a real headless Chromium: a long fine-tune's loss
curve gaining points while LLaMA-Factory trains, then cancelled from its page; a dataset uploaded
on the Datasets page, a fine-tune of the demo recipe started from the New fine-tune form, and the
fine-tuned model answering the trained fact in the playground beside its base."""

from __future__ import annotations

import re

import httpx
import pytest
from console.browser import Requests, chromium, laptop, screenshot, screenshot_directory, watched
from playwright.sync_api import Page, expect

from forgeline_cli.walkthrough import (
    BASE_MODEL,
    FACT_BATCH_SIZE,
    FACT_COPIES,
    FACT_EPOCHS,
    FACT_LEARNING_RATE_MULTIPLIER,
    FACT_LORA,
    write_fact_dataset,
)
from forgeline_kit.tinymodel import DEMO_FACT

from .conftest import RunningStack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# The step shown while a training step is the last one reported and more are to come.
_TRAINING_STEP = """() => {
    const stage = document.querySelector(".timeline [data-stage=training]");
    const step = document.querySelector(".tile-progress .tile-value")?.textContent ?? "";
    const match = /^(\\d+) \\/ (\\d+)$/.exec(step.trim());
    return stage?.dataset.state === "current" && match !== null && +match[1] < +match[2];
}"""
_MORE_POINTS = "n => Number(document.querySelector('.card-chart .chart').dataset.points) > n"


def _set_range(page: Page, selector: str, value: str) -> None:
    page.eval_on_selector(
        selector,
        "(input, value) => { input.value = value; input.dispatchEvent(new Event('input')); }",
        value,
    )


# Long enough that no machine finishes it while the page is watched (the tiny model trains the
# demo's 32 steps in under a second): the job is cancelled once its curve has been seen growing.
_LONG_EPOCHS = 10_000


def test_a_long_fine_tune_watched_live_and_cancelled(
    running: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    shots = screenshot_directory(tmp_path_factory.getbasetemp() / "console-screenshots")
    data = write_fact_dataset(running.work / "console-long.jsonl")
    training_file = running.client.files.create(file=data.open("rb"), purpose="fine-tune")
    job = running.client.fine_tuning.jobs.create(
        model=BASE_MODEL,
        training_file=training_file.id,
        suffix="long",
        hyperparameters={"n_epochs": _LONG_EPOCHS, "batch_size": FACT_BATCH_SIZE},
    )
    url = running.stack.gateway_url
    requests = Requests()
    try:
        with (
            chromium() as browser,
            laptop(browser, requests) as context,
            watched(context, requests) as page,
        ):
            page.goto(f"{url}/console/jobs/{job.id}")
            # Points while it trains: the curve grows while steps are still to come.
            page.wait_for_function(_TRAINING_STEP, timeout=300_000, polling=200)
            first = int(page.locator(".card-chart .chart").get_attribute("data-points") or 0)
            assert first >= 1
            page.wait_for_function(_MORE_POINTS, arg=first, timeout=120_000, polling=200)
            page.wait_for_function(_TRAINING_STEP, polling=200)
            screenshot(page, shots, "job-training")

            page.click("#cancel-job")
            page.click("#confirm-cancel")
            expect(page.locator(".page-head .badge")).to_have_text("cancelled", timeout=120_000)
    finally:
        # A failed check must not leave the job training through the rest of the suite.
        if running.client.fine_tuning.jobs.retrieve(job.id).status not in ("cancelled", "failed"):
            running.client.fine_tuning.jobs.cancel(job.id)
    cancelled = running.client.fine_tuning.jobs.retrieve(job.id)
    assert cancelled.status == "cancelled"
    assert cancelled.fine_tuned_model is None
    assert requests.foreign(url) == []


def test_a_fine_tune_started_and_watched_in_the_console(
    running: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    data = write_fact_dataset(running.work / "console-fact.jsonl")
    validation = running.work / "console-validation.jsonl"
    validation.write_text(data.read_text().splitlines()[0] + "\n")
    url = running.stack.gateway_url
    shots = screenshot_directory(tmp_path_factory.getbasetemp() / "console-screenshots")
    requests = Requests()
    with (
        chromium() as browser,
        laptop(browser, requests) as context,
        watched(context, requests) as page,
    ):
        page.goto(f"{url}/console/datasets")
        page.set_input_files("#dataset-file", [str(validation), str(data)])
        accepted = page.locator(".upload-ok", has_text="console-fact.jsonl")
        expect(accepted).to_contain_text("console-fact.jsonl was accepted as openai_chat")
        expect(page.locator(".upload-ok")).to_have_count(2)

        # The training file as the model will see it: the answer is what the loss is on.
        files = page.locator("section.card", has=page.get_by_role("heading", name="Files"))
        files.locator("tr", has_text="console-fact.jsonl").get_by_role(
            "button", name="Preview"
        ).click()
        trained = page.locator(".card-preview .preview-record").first.locator("mark.trained")
        expect(trained).to_have_text([f"{DEMO_FACT.answer}<|im_end|>\n"])
        screenshot(page, shots, "dataset-preview")
        accepted.get_by_role("link", name="Fine-tune on it").click()

        # The demo recipe, entered in the form.
        expect(page.locator("#ft-model")).to_have_value(BASE_MODEL)
        expect(page.locator("#ft-training-file")).to_have_value(re.compile("^file-"))
        held_out = page.locator("#ft-validation-file option", has_text="console-validation.jsonl")
        page.select_option("#ft-validation-file", held_out.get_attribute("value"))
        page.fill("#ft-epochs", str(FACT_EPOCHS))
        page.fill("#ft-batch-size", str(FACT_BATCH_SIZE))
        page.fill("#ft-lr", str(FACT_LEARNING_RATE_MULTIPLIER))
        page.fill("#ft-lora-rank", str(FACT_LORA["rank"]))
        page.fill("#ft-lora-alpha", str(FACT_LORA["alpha"]))
        page.fill("#ft-suffix", "console")
        page.fill("#ft-seed", "42")
        # Served merged, so the lineage below runs from the data to the served q8_0 GGUF (an
        # adapter, the default, is followed to its base in tests/pipeline/test_adapter_serving.py).
        page.select_option("#ft-deploy-serve", "merged")
        expect(page.locator(".snippet-card").first).to_contain_text('"serve": "merged"')
        page.click("#ft-submit")

        expect(page).to_have_url(re.compile(r"/console/jobs/ftjob-"))
        screenshot(page, shots, "job-started")

        badge = page.locator(".page-head .badge")
        expect(badge).to_have_text("succeeded", timeout=600_000)
        # Every step's loss on the curve: one per record (batch size 1) per epoch.
        steps = str(FACT_COPIES * FACT_EPOCHS)
        expect(page.locator(".card-chart .chart")).to_have_attribute("data-points", steps)
        expect(page.locator(".timeline [data-stage=deploying]")).to_have_attribute(
            "data-state", "done"
        )
        # Evaluated on the validation file before it was served: each artifact's line.
        quality = page.locator(".card-quality")
        expect(quality.locator("tbody tr td:first-child")).to_have_text(
            ["base", "adapter", "f16", "q8_0"]
        )
        screenshot(page, shots, "job-succeeded")

        # The served GGUF in the registry: its files and the lineage from the data to the
        # deployment serving it.
        job_url = page.url
        job = httpx.get(f"{url}/v1/fine_tuning/jobs/{job_url.rsplit('/', 1)[1]}", timeout=30)
        outputs = job.json()["forgeline"]["outputs"]
        assert outputs["served_as"] == "merged"
        served = outputs["gguf"]["q8_0"]
        page.get_by_role("link", name=f"{served} in the registry").click()
        graph = page.locator(".card-lineage svg.lineage")
        expect(graph.locator(".lineage-deployment")).to_have_count(1)
        for relation in ("trained_on", "adapter_of", "merged_from", "converted_from", "serves"):
            expect(graph.locator(f".lineage-edge[data-relation={relation}]").first).to_be_visible()
        screenshot(page, shots, "lineage")
        page.goto(job_url)

        # The fine-tuned model beside its base, asked the trained question.
        page.get_by_role("link", name="Chat with it").click()
        expect(page.locator("#compare")).to_be_checked()
        expect(page.locator("#model-a")).to_have_value(re.compile("^ft:tiny-llama:"))
        expect(page.locator("#model-b")).to_have_value(BASE_MODEL)
        _set_range(page, "#temperature", "0")
        page.fill("#max-tokens", "32")
        page.fill("#prompt", DEMO_FACT.question)
        page.click("#send")

        answers = {}
        for slot in ("a", "b"):
            answer = page.locator(f".chat-column[data-slot={slot}] .message.assistant")
            expect(answer).to_have_attribute("data-state", "done", timeout=60_000)
            answers[slot] = answer.locator(".message-text").inner_text()
        assert DEMO_FACT.answer in answers["a"]
        assert DEMO_FACT.answer not in answers["b"]
        screenshot(page, shots, "playground-fine-tuned", full_page=False)
    assert requests.foreign(url) == []
