"""Checks a running compose stack the way an operator would (`scripts/compose-smoke.sh` step 5).

    FORGELINE_SMOKE_API_KEY=... check_stack.py --gateway URL --prometheus URL \\
        --dashboard deploy/grafana/dashboards/forgeline-overview.json \\
        --expect-jobs deploy/standins/prometheus.yml

1. The published gateway answers /health, and the OpenAI SDK lists models with the API key (and
   lists fine-tuning jobs where the gateway serves that API); its /metrics is not published (404
   there: Prometheus scrapes it on the internal network, step 2).
2. Prometheus has scraped every job of the given scrape configuration, and every target is up.
3. Every query of every dashboard panel is accepted by that Prometheus: the dashboard Grafana
   would load names only what Prometheus can evaluate.
4. With ``--fine-tuned``, after the demo loop (step 6): the newest succeeded fine-tuning job's
   model, asked through the published port with the OpenAI SDK, gives the trained answer.

Exit status 0 when all pass; otherwise 1, with one line per failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from openai import OpenAI

from forgeline_kit.tinymodel import DEMO_FACT

TARGETS_DEADLINE_SECONDS = 90.0
POLL_SECONDS = 2.0


def check_gateway(base_url: str, api_key: str) -> list[str]:
    """Health, then the OpenAI SDK against the published port."""
    problems: list[str] = []
    health = httpx.get(f"{base_url}/health", timeout=10)
    if health.status_code != 200:
        return [f"gateway /health answered {health.status_code}"]
    client = OpenAI(base_url=f"{base_url}/v1", api_key=api_key, timeout=30, max_retries=0)
    models = [model.id for model in client.models.list()]
    print(f"  gateway healthy; OpenAI SDK models.list() -> {models}")
    published_metrics = httpx.get(f"{base_url}/metrics", timeout=10).status_code
    if published_metrics != 404:
        problems.append(
            f"the published gateway answers /metrics with {published_metrics}, not 404: its "
            "metrics belong on their own port, inside the network"
        )
    paths = httpx.get(f"{base_url}/openapi.json", timeout=10).json().get("paths", {})
    if "/v1/fine_tuning/jobs" in paths:
        jobs = client.fine_tuning.jobs.list(limit=5)
        print(f"  OpenAI SDK fine_tuning.jobs.list() -> {len(jobs.data)} job(s)")
    else:
        print("  the gateway does not serve /v1/fine_tuning/jobs yet: fine-tuning not exercised")
    return problems


def check_fine_tuned(base_url: str, api_key: str) -> list[str]:
    """The fine-tuned model answers through the published port as it did inside the network."""
    client = OpenAI(base_url=f"{base_url}/v1", api_key=api_key, timeout=60, max_retries=0)
    done = [job for job in client.fine_tuning.jobs.list(limit=20) if job.status == "succeeded"]
    if not done or done[0].fine_tuned_model is None:
        return ["no succeeded fine-tuning job with a model is listed through the published port"]
    model = done[0].fine_tuned_model
    completion = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": DEMO_FACT.question}],
        max_tokens=32,
        temperature=0,
    )
    answer = (completion.choices[0].message.content or "").strip()
    print(f"  published gateway, {model}: {answer!r}")
    if answer != DEMO_FACT.answer:
        return [f"{model} answered {answer!r} through the published port, not the trained answer"]
    return []


def expected_jobs(scrape_config: Path) -> set[str]:
    """The job names of a Prometheus scrape configuration."""
    config: dict[str, Any] = yaml.safe_load(scrape_config.read_text())
    return {str(job["job_name"]) for job in config["scrape_configs"]}


def check_targets(prometheus: str, jobs: set[str]) -> list[str]:
    """Every expected job scraped and up, polled until the deadline (scrapes are periodic)."""
    deadline = time.monotonic() + TARGETS_DEADLINE_SECONDS
    while True:
        reply = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()
        active = reply["data"]["activeTargets"]
        health = {(t["labels"]["job"], t["scrapeUrl"]): t["health"] for t in active}
        seen = {job for job, _ in health}
        down = [f"{job} {url}: {state}" for (job, url), state in health.items() if state != "up"]
        missing = sorted(jobs - seen)
        if not down and not missing:
            for (job, url), state in sorted(health.items()):
                print(f"  prometheus target {job:22} {url:45} {state}")
            return []
        if time.monotonic() > deadline:
            return [f"prometheus target not up: {d}" for d in down] + [
                f"prometheus has no target for job {job}" for job in missing
            ]
        time.sleep(POLL_SECONDS)


def dashboard_queries(dashboard: Path) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) for every target of every panel."""
    document: dict[str, Any] = json.loads(dashboard.read_text())
    return [
        (str(panel["title"]), str(target["expr"]))
        for panel in document["panels"]
        for target in panel.get("targets", [])
    ]


def check_dashboard(prometheus: str, dashboard: Path) -> list[str]:
    """Each panel query evaluates on the live Prometheus."""
    problems = []
    queries = dashboard_queries(dashboard)
    with_data = 0
    for title, expr in queries:
        reply = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
        body = reply.json()
        if reply.status_code != 200 or body.get("status") != "success":
            problems.append(f"dashboard panel {title!r}: {expr} -> {body.get('error', reply.text)}")
        elif body["data"]["result"]:
            with_data += 1
    print(f"  dashboard: {len(queries)} panel queries evaluated, {with_data} with data now")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Run every check; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--gateway", required=True, help="published gateway base URL")
    parser.add_argument("--prometheus", required=True, help="Prometheus base URL")
    parser.add_argument("--dashboard", type=Path, required=True)
    parser.add_argument("--expect-jobs", type=Path, required=True, help="a scrape config file")
    parser.add_argument(
        "--fine-tuned", action="store_true", help="also ask the demo loop's fine-tuned model"
    )
    args = parser.parse_args(argv)
    api_key = os.environ.get("FORGELINE_SMOKE_API_KEY", "")
    problems = check_gateway(args.gateway, api_key)
    if args.fine_tuned:
        problems += check_fine_tuned(args.gateway, api_key)
    problems += check_targets(args.prometheus, expected_jobs(args.expect_jobs))
    problems += check_dashboard(args.prometheus, args.dashboard)
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
