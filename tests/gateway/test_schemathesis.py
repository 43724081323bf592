"""Schemathesis against the gateway's own OpenAPI document: whatever a client sends, the gateway
never answers with a server error (5xx) of its own making, and answers as its document says.

Two runs over real sockets: the whole API as documented (mostly refused: unknown models, invalid
deployments), and the inference endpoints with ``model`` pinned to a deployed model, so generated
requests go all the way through routing to a backend (the vLLM contract fake).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis  # noqa: F401 - a test dependency: fail loudly when it is missing
from fakes.server import FakeServer
from fakes.vllm import FakeVllm
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Served, StartGateway

SCHEMATHESIS = Path(sys.executable).with_name("st")
MODEL = "schemathesis-target-model"
INFERENCE = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
#: Examples per operation: a short run in `make test`; `make fuzz` sets more
#: (FORGELINE_FUZZ_EXAMPLES).
EXAMPLES = int(os.environ.get("FORGELINE_FUZZ_EXAMPLES", "25"))
RUN_TIMEOUT_S = 300 + 12 * EXAMPLES


@pytest.fixture
def served(start_gateway: StartGateway) -> Iterator[Served]:
    fake = FakeVllm("base")
    server = FakeServer(fake.app).start()
    served = start_gateway({"connect_timeout_seconds": 0.5, "max_body_bytes": 1 << 20})
    served.deploy({"name": MODEL, "backend": "vllm", "base_model": "base", "urls": [server.url]})
    yield served
    server.stop()


def _run(served: Served, key: str, schema: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - a fixed argument list
        [
            str(SCHEMATHESIS),
            "run",
            schema,
            "--url",
            served.url,
            "--header",
            f"Authorization: Bearer {key}",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance",
            "--max-examples",
            str(EXAMPLES),
            "--workers",
            "1",
            "--seed",
            "1",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def _pinned(document: dict[str, Any]) -> dict[str, Any]:
    """The document with the inference requests' `model` limited to the deployed model."""
    pinned: dict[str, Any] = json.loads(json.dumps(document))
    for path in INFERENCE:
        body = pinned["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        ref = body["schema"]["$ref"].rsplit("/", 1)[-1]
        pinned["components"]["schemas"][ref]["properties"]["model"] = {"enum": [MODEL]}
    return pinned


def test_no_request_makes_the_gateway_fail(served: Served, tmp_path: Path) -> None:
    document = httpx.get(f"{served.url}/openapi.json", trust_env=False).json()
    created = served.admin(
        "POST", "/v1/keys", json={"name": "st", "scopes": ["admin", "inference"]}
    )
    key = created.json()["key"]
    (tmp_path / "openapi.json").write_text(json.dumps(document))
    (tmp_path / "pinned.json").write_text(json.dumps(_pinned(document)))

    # Inference first: the whole-API run may well delete the deployment it finds listed.
    inference = _run(
        served,
        key,
        str(tmp_path / "pinned.json"),
        "--include-path-regex",
        "^/v1/(chat/completions|completions|embeddings|responses)$",
    )
    whole = _run(
        served, key, str(tmp_path / "openapi.json"), "--phases", "examples,coverage,fuzzing"
    )

    assert inference.returncode == 0, inference.stdout[-6000:] + inference.stderr[-2000:]
    assert whole.returncode == 0, whole.stdout[-6000:] + whole.stderr[-2000:]
    generated = _generated(inference.stdout) + _generated(whole.stdout)
    print(f"schemathesis: {generated} generated requests, no server error")  # `make fuzz` shows it
    # The pinned run did reach the backend, not just the gateway's validation.
    answered = [
        sample
        for family in text_string_to_metric_families(served.metrics())
        for sample in family.samples
        if sample.name == "forgeline_gateway_requests_total"
        and sample.labels["model"] == MODEL
        and sample.labels["status"] == "200"
    ]
    assert sum(sample.value for sample in answered) > 0


def _generated(output: str) -> int:
    """How many test cases a schemathesis run reports it generated."""
    found = re.search(r"Test cases:\s*(\d+) generated", output)
    assert found, output[-3000:]
    return int(found.group(1))
