"""``/metrics``: on a port of its own, what operators graph, by model, backend and status, clean
for promtool."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import httpx
import openai
import pytest
from fakes.server import FakeServer
from fakes.vllm import FakeVllm
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Served, StartGateway

CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


@pytest.fixture
def served(start_gateway: StartGateway) -> Iterator[tuple[Served, FakeVllm]]:
    fake = FakeVllm("base")
    server = FakeServer(fake.app).start()
    served = start_gateway()
    served.deploy({"name": "m", "backend": "vllm", "base_model": "base", "urls": [server.url]})
    yield served, fake
    server.stop()


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _traffic(served: Served, fake: FakeVllm) -> None:
    client = served.client()
    client.chat.completions.create(model="m", messages=CHAT, max_tokens=3)
    list(client.chat.completions.create(model="m", messages=CHAT, max_tokens=5, stream=True))
    client.completions.create(model="m", prompt="a b c", max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=CHAT)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=CHAT, extra_body={"bogus": 1})
    fake.fail_next = 1
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="m", messages=CHAT)


def test_requests_latency_ttft_tokens_in_flight_and_upstream_errors(
    served: tuple[Served, FakeVllm],
) -> None:
    gateway, fake = served
    _traffic(gateway, fake)
    samples = _samples(gateway.metrics())

    def value(name: str, **labels: str) -> float:
        return samples.get((name, frozenset(labels.items())), 0.0)

    ok = {"model": "m", "backend": "vllm"}
    assert value("forgeline_gateway_requests_total", **ok, endpoint="chat", status="200") == 2
    assert (
        value("forgeline_gateway_requests_total", **ok, endpoint="completions", status="200") == 1
    )
    assert value("forgeline_gateway_requests_total", **ok, endpoint="chat", status="400") == 1
    assert value("forgeline_gateway_requests_total", **ok, endpoint="chat", status="502") == 1
    unknown = {"model": "unknown", "backend": "none", "endpoint": "chat", "status": "404"}
    assert value("forgeline_gateway_requests_total", **unknown) == 1
    assert (
        value(
            "forgeline_gateway_request_duration_seconds_count", **ok, endpoint="chat", status="200"
        )
        == 2
    )
    assert value("forgeline_gateway_time_to_first_token_seconds_count", **ok, endpoint="chat") == 1
    # The fake counts words: 3 + 5 + 2 completion tokens.
    assert value("forgeline_gateway_completion_tokens_total", **ok) == 10
    assert value("forgeline_gateway_prompt_tokens_total", **ok) > 0
    assert value("forgeline_gateway_in_flight_requests", **ok) == 0
    assert value("forgeline_gateway_upstream_errors_total", **ok, reason="status_5xx") == 1


def test_promtool_finds_nothing_to_fix(served: tuple[Served, FakeVllm]) -> None:
    gateway, fake = served
    _traffic(gateway, fake)
    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed: apt-get install -y prometheus"
    text = gateway.metrics()

    done = subprocess.run(  # noqa: S603 - a fixed argument list
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == ""
    assert done.stderr.strip() == ""


def test_metrics_have_a_port_of_their_own_and_the_api_port_does_not_serve_them(
    served: tuple[Served, FakeVllm],
) -> None:
    gateway, fake = served
    _traffic(gateway, fake)

    assert gateway.gateway.metrics is not None
    assert gateway.gateway.metrics.port not in (0, gateway.gateway.port)
    scrape = httpx.get(gateway.metrics_url, timeout=10.0, trust_env=False)
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    assert "forgeline_gateway_requests_total{" in scrape.text

    on_api = httpx.get(f"{gateway.url}/metrics", trust_env=False)
    assert on_api.status_code == 404
    assert set(on_api.json()["error"]) == {"message", "type", "param", "code"}
    paths = httpx.get(f"{gateway.url}/openapi.json", trust_env=False).json()["paths"]
    assert "/metrics" not in paths
