"""Prometheus scrape configs and the Grafana dashboard: valid, in step, on real metric names."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import ROOT, find_tool

FULL = ROOT / "deploy/prometheus/prometheus.yml"
CPU = ROOT / "deploy/prometheus/prometheus.cpu.yml"
STANDINS = ROOT / "deploy/standins/prometheus.yml"
DASHBOARD = ROOT / "deploy/grafana/dashboards/forgeline-overview.json"
SOURCES = [ROOT / "kit/src", *sorted((ROOT / "services").glob("*/src"))]

# Exported by upstream servers, not by this repository.
UPSTREAM_PREFIXES = ("vllm:",)
PROMQL_WORDS = {"sum", "by", "rate", "histogram_quantile", "le", "up", "without", "avg", "max"}


def _jobs(path: Path) -> dict[str, list[str]]:
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    return {
        job["job_name"]: [t for c in job["static_configs"] for t in c["targets"]]
        for job in config["scrape_configs"]
    }


@pytest.mark.parametrize("path", [FULL, CPU, STANDINS], ids=lambda p: p.name)
def test_promtool_accepts_each_scrape_config(path: Path) -> None:
    done = subprocess.run(  # noqa: S603 - a fixed argument list
        [find_tool("promtool"), "check", "config", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_service_with_metrics_is_scraped_on_the_port_it_serves() -> None:
    jobs = _jobs(FULL)
    # Every Forgeline service, the gateway included, serves /metrics on 9464 (its image sets
    # FORGELINE_<SERVICE>_METRICS_PORT), never on its API port.
    for service in ("registry", "trainer", "converter", "gateway"):
        assert jobs[f"forgeline-{service}"] == [f"{service}:9464"]
    assert jobs["vllm"] == ["vllm:8000"]
    assert jobs["minio"] == ["minio:9000"]


def test_the_cpu_and_smoke_configs_differ_only_by_what_those_stacks_lack() -> None:
    full, cpu, standins = _jobs(FULL), _jobs(CPU), _jobs(STANDINS)
    assert cpu == {k: v for k, v in full.items() if k != "vllm"}
    assert standins == {k: v for k, v in cpu.items() if k != "minio"}


def _dashboard_expressions() -> list[str]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in document["panels"] for t in p["targets"]]


def test_the_dashboard_is_provisioned_from_its_folder() -> None:
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/forgeline.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    document = json.loads(DASHBOARD.read_text())
    uids = {t["datasource"]["uid"] for p in document["panels"] for t in p["targets"]}
    assert uids == {source["uid"]}
    titles = " ".join(p["title"].lower() for p in document["panels"])
    for topic in ("requests", "latency", "first token", "tokens per second", "training loss",
                  "jobs by state", "gpu"):  # fmt: skip
        assert topic in titles


def test_every_dashboard_metric_is_one_the_code_exports() -> None:
    code = "\n".join(p.read_text() for d in SOURCES for p in d.rglob("*.py"))
    exported = set(re.findall(r'"((?:forgeline|grpc)_[a-z_]+)"', code))
    for expr in _dashboard_expressions():
        for name in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
            if name in PROMQL_WORDS or name.startswith(UPSTREAM_PREFIXES):
                continue
            if not name.startswith(("forgeline_", "grpc_")):
                continue  # label names and the like
            base = re.sub(r"_(total|bucket|sum|count)$", "", name)
            assert base in exported or name in exported, f"{name} is not exported by the code"
