"""The job page while a job trains: its stage timeline, the loss, learning-rate and throughput
curves gaining points as the pipeline records metrics events, its events and checkpoints, and
Cancel. The events are written into the gateway's job store as the pipeline writes them; a real
training run on the console is left to tests/pipeline (it costs a minute)."""

from __future__ import annotations

import math

from playwright.sync_api import Page, expect

from .conftest import Console

JOB = "ftjob-console0123456789abcdef"
TOTAL = 48


def _train(console: Console, first: int, last: int) -> None:
    """Metrics events of steps `first`..`last`, as a LoRA run on the tiny model reports them."""
    for step in range(first, last + 1):
        loss = 0.08 + 2.6 * math.exp(-step / 9) + 0.05 * math.sin(step * 1.7)
        more = {
            "learning_rate": 5e-3 * min(1.0, step / 6) * (1 - step / (TOTAL + 1)),
            "tokens_per_second": 1450 + 60 * math.sin(step / 3),
        }
        if step % 12 == 0:
            more["valid_loss"] = loss + 0.12
        console.add_metrics(JOB, step, TOTAL, loss, **more)


def test_the_job_page_draws_its_curves_as_the_job_trains(console: Console, page: Page) -> None:
    console.add_job(JOB)
    console.add_event(JOB, f"Created fine-tuning job: {JOB}")
    console.add_event(JOB, "Validated train.jsonl: 16 records (openai_chat)")
    console.add_event(JOB, "Trainer: training")
    _train(console, 1, 20)
    console.trainer.add_checkpoint(10, 0.71)
    console.trainer.add_checkpoint(20, 0.33)

    page.goto(f"{console.url}/console/jobs/{JOB}")

    loss = page.locator(".card-chart .chart")
    expect(loss).to_have_attribute("data-points", "21")  # 20 training steps, 1 validation
    timeline = page.locator(".timeline")
    expect(timeline.locator("[data-stage=validating_files]")).to_have_attribute(
        "data-state", "done"
    )
    expect(timeline.locator("[data-stage=training]")).to_have_attribute("data-state", "current")
    expect(timeline.locator("[data-stage=converting]")).to_have_attribute("data-state", "pending")
    expect(page.locator(".events")).to_contain_text(f"Created fine-tuning job: {JOB}")
    checkpoints = page.locator("section.card", has=page.get_by_role("heading", name="Checkpoints"))
    expect(checkpoints.locator("tbody tr")).to_have_count(2)

    # The job trains on: the page follows without a reload.
    _train(console, 21, TOTAL)

    expect(loss).to_have_attribute("data-points", str(TOTAL + TOTAL // 12))
    expect(loss.locator("[data-series='train loss']")).to_have_attribute("data-count", str(TOTAL))
    expect(page.locator(".tile-progress .tile-value")).to_have_text(f"{TOTAL} / {TOTAL}")
    for label in ("Learning rate", "Tokens per second"):
        chart = page.locator("section.card", has=page.get_by_role("heading", name=label))
        expect(chart.locator(".chart")).to_have_attribute("data-points", str(TOTAL))
    page.locator(".card-chart .overlay").hover()  # the hover guide with the values at a step
    expect(page.locator(".card-chart .chart-tip")).to_contain_text("train loss")
    console.screenshot(page, "job")

    page.goto(f"{console.url}/console/jobs")
    row = page.locator("tbody tr", has=page.get_by_text(JOB))
    expect(row.locator(".badge")).to_have_text("running")
    console.screenshot(page, "jobs")

    row.get_by_role("link").click()
    page.click("#cancel-job")
    page.click("#confirm-cancel")

    expect(page.locator(".page-head .badge")).to_have_text("cancelled")
    expect(page.locator(".events")).to_contain_text("The job was cancelled")
    expect(page.locator("#cancel-job")).to_have_count(0)
