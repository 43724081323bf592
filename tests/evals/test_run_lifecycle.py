"""Eval runs across a gateway restart and a backend that dies: what is done is kept, a restarted
gateway resumes what was under way, a dead backend ends the run ``failed``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from database_urls import database_url
from fakes.server import FakeServer
from fakes.vllm import FakeVllm
from gateway.conftest import Served, _start
from gateway.harness import Gateway

from forgeline_gateway.app import default_backends
from forgeline_kit.databases import connect

from .conftest import FAKE_BASE, wait_for_run

ROWS = [{"item": {"question": f"question {i}", "answer": "Forgeline"}} for i in range(24)]
CRITERION = {
    "type": "string_check",
    "name": "names the product",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "like",
}


@pytest.fixture
def fake() -> Iterator[tuple[FakeVllm, FakeServer]]:
    vllm = FakeVllm(FAKE_BASE)
    server = FakeServer(vllm.app).start()
    yield vllm, server
    server.stop()


@pytest.fixture
def gateways() -> Iterator[list[Gateway]]:
    started: list[Gateway] = []
    yield started
    for gateway in started:
        gateway.stop()


def start(database: Path, server: FakeServer, started: list[Gateway]) -> Served:
    return _start(database, {"vllm_urls": [server.url]}, default_backends, started)


def begin_run(served: Served) -> tuple[str, str]:
    client = served.client(served.admin_key)
    created = client.evals.create(
        data_source_config={"type": "custom", "item_schema": {"type": "object"}},
        testing_criteria=[CRITERION],  # type: ignore[list-item]
    )
    data_source: Any = {
        "type": "completions",
        "model": "fake",
        "input_messages": {
            "type": "template",
            "template": [{"role": "user", "content": "{{item.question}}"}],
        },
        "source": {"type": "file_content", "content": ROWS},
        "sampling_params": {"max_completion_tokens": 2},
    }
    run = client.evals.runs.create(created.id, data_source=data_source)
    return created.id, run.id


def first_outputs(served: Served, eval_id: str, run_id: str) -> int:
    client = served.client(served.admin_key)
    deadline = time.monotonic() + 60
    while (total := client.evals.runs.retrieve(run_id, eval_id=eval_id).result_counts.total) == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return total


def test_a_restarted_gateway_resumes_the_runs_under_way(
    tmp_path: Path, fake: tuple[FakeVllm, FakeServer], gateways: list[Gateway]
) -> None:
    vllm, server = fake
    database = tmp_path / "gateway.sqlite3"
    first = start(database, server, gateways)
    first.deploy({"name": "fake", "backend": "vllm", "base_model": FAKE_BASE})
    vllm.answer_delay = 0.4
    eval_id, run_id = begin_run(first)
    first_outputs(first, eval_id, run_id)

    first.gateway.stop()

    db = connect(database_url(database))
    try:
        (status,) = db.execute("SELECT status FROM eval_runs WHERE id = ?", (run_id,)).fetchone()
        (kept,) = db.execute(
            "SELECT COUNT(*) FROM eval_output_items WHERE run_id = ?", (run_id,)
        ).fetchone()
    finally:
        db.close()
    assert status == "in_progress"
    assert 0 < kept < len(ROWS)
    vllm.answer_delay = 0.0

    second = start(database, server, gateways)  # the deployment is placed again, the run resumed
    client = second.client(second.admin_key)
    done = wait_for_run(client, eval_id, run_id)

    assert done.status == "completed"
    assert done.result_counts.model_dump() == {
        "total": len(ROWS),
        "passed": len(ROWS),
        "failed": 0,
        "errored": 0,
    }
    items = list(client.evals.runs.output_items.list(run_id, eval_id=eval_id, limit=7))
    assert [i.datasource_item_id for i in items] == list(range(len(ROWS)))
    assert len({i.id for i in items}) == len(ROWS)


def _runs_here(served: Served, run_id: str) -> bool:
    return served.gateway.app.state.evals.service.executor.tasks.running(run_id) is not None


def test_replicas_execute_a_run_once_and_another_finishes_it_when_its_replica_stops(
    tmp_path: Path, fake: tuple[FakeVllm, FakeServer], gateways: list[Gateway]
) -> None:
    vllm, server = fake
    database = tmp_path / "gateway.sqlite3"
    # Replicas name themselves by host and model cache: a cache of its own each, as on two hosts.
    settings: dict[str, Any] = {"vllm_urls": [server.url], "lease_seconds": 3}
    first = _start(database, settings | {"model_cache": tmp_path / "a"}, default_backends, gateways)
    first.deploy({"name": "fake", "backend": "vllm", "base_model": FAKE_BASE})
    second = _start(  # restores the deployment
        database, settings | {"model_cache": tmp_path / "b"}, default_backends, gateways
    )
    vllm.answer_delay = 1.0
    eval_id, run_id = begin_run(first)
    first_outputs(first, eval_id, run_id)
    # A lease round of the second replica's, now rather than within its second.
    second.gateway.call(second.gateway.app.state.evals.service.executor.tasks.round())

    assert _runs_here(first, run_id)
    assert not _runs_here(second, run_id)  # executed once
    first.gateway.stop()  # gives its leases up
    vllm.answer_delay = 0.0
    client = second.client(second.admin_key)
    done = wait_for_run(client, eval_id, run_id)

    assert done.status == "completed"
    assert done.result_counts.model_dump() == {
        "total": len(ROWS),
        "passed": len(ROWS),
        "failed": 0,
        "errored": 0,
    }
    items = list(client.evals.runs.output_items.list(run_id, eval_id=eval_id, limit=7))
    assert [i.datasource_item_id for i in items] == list(range(len(ROWS)))


def test_a_backend_that_dies_mid_run_fails_the_run_keeping_what_was_done(
    tmp_path: Path, fake: tuple[FakeVllm, FakeServer], gateways: list[Gateway]
) -> None:
    vllm, server = fake
    served = start(tmp_path / "gateway.sqlite3", server, gateways)
    served.deploy({"name": "fake", "backend": "vllm", "base_model": FAKE_BASE})
    vllm.answer_delay = 0.3
    eval_id, run_id = begin_run(served)
    first_outputs(served, eval_id, run_id)

    vllm.fail_next = 1_000_000  # every request from now on: a 500

    client = served.client(served.admin_key)
    done = wait_for_run(client, eval_id, run_id)
    assert done.status == "failed"
    assert done.error is not None
    assert done.error.code == "bad_gateway"
    assert "stopped after 3 attempts" in done.error.message
    kept: Any = list(client.evals.runs.output_items.list(run_id, eval_id=eval_id))
    assert 0 < len(kept) == done.result_counts.total < len(ROWS)
    assert all(item.status == "pass" for item in kept)
