"""The vLLM adapter against the vLLM contract fake: base models, LoRA adapters loaded and unloaded
at runtime, failover on 5xx, backpressure, and the SDK end to end."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from fakes.server import FakeServer
from fakes.vllm import FakeVllm
from openai.types.chat import ChatCompletionMessageParam

from .conftest import Served, StartGateway

CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
BASE = "org/tiny-base"
FT = "ft:tiny-base:acme:support:abc123"


@pytest.fixture
def vllms() -> Iterator[list[tuple[FakeVllm, FakeServer]]]:
    """Two fake vLLM servers serving the same base model."""
    fakes = [FakeVllm(BASE) for _ in range(2)]
    servers = [FakeServer(f.app).start() for f in fakes]
    yield list(zip(fakes, servers, strict=True))
    for server in servers:
        server.stop()


@pytest.fixture
def adapter_dir(tmp_path: Path) -> Path:
    """A LoRA adapter directory as vLLM reads it (PEFT's layout)."""
    path = tmp_path / "adapter"
    path.mkdir()
    (path / "adapter_config.json").write_text('{"r": 8, "peft_type": "LORA"}')
    return path


def _gateway(
    start: StartGateway, vllms: list[tuple[FakeVllm, FakeServer]], **settings: object
) -> Served:
    return start({"vllm_urls": [s.url for _, s in vllms], **settings})


def test_an_adapter_is_loaded_at_runtime_served_and_unloaded(
    start_gateway: StartGateway, vllms: list[tuple[FakeVllm, FakeServer]], adapter_dir: Path
) -> None:
    served = _gateway(start_gateway, vllms)
    deployment = served.deploy(
        {
            "name": FT,
            "backend": "vllm",
            "base_model": BASE,
            "adapter": str(adapter_dir),
            "metadata": {"base": BASE, "version": "3"},
        }
    )

    assert deployment["status"] == "ready"
    assert deployment["instances"] == 2
    assert all(fake.loras == {FT: str(adapter_dir)} for fake, _ in vllms)

    client = served.client()
    answer = client.chat.completions.create(model=FT, messages=CHAT, max_tokens=4)
    assert answer.model == FT
    assert answer.choices[0].message.content == "Forgeline serves this answer"
    sent = [r for fake, _ in vllms for r in fake.requests]
    assert [r["model"] for r in sent] == [FT]  # the adapter is named as a model
    model = client.models.retrieve(FT).model_dump()
    assert model["backend"] == "vllm"
    assert model["metadata"]["version"] == "3"

    assert served.admin("DELETE", f"/v1/deployments/{FT}").status_code == 204
    assert all(fake.loras == {} for fake, _ in vllms)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=FT, messages=CHAT)


def test_a_base_model_is_served_under_its_public_name(
    start_gateway: StartGateway, vllms: list[tuple[FakeVllm, FakeServer]]
) -> None:
    served = _gateway(start_gateway, vllms)
    served.deploy({"name": "tiny", "backend": "vllm", "base_model": BASE})
    client = served.client()

    answer = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=3, n=3)
    chunks = list(
        client.completions.create(
            model="tiny",
            prompt="hi",
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert answer.model == "tiny"  # vLLM knows it as BASE; clients never see that name
    assert len(answer.choices) == 3
    assert all(c.model == "tiny" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Forgeline serves this"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    assert {r["model"] for fake, _ in vllms for r in fake.requests} == {BASE}


def test_vllm_parameters_pass_through_and_unknown_ones_are_refused(
    start_gateway: StartGateway, vllms: list[tuple[FakeVllm, FakeServer]]
) -> None:
    served = _gateway(start_gateway, vllms)
    served.deploy({"name": "tiny", "backend": "vllm", "base_model": BASE})
    client = served.client()

    client.completions.create(
        model="tiny",
        prompt="hi",
        max_tokens=2,
        logprobs=2,
        echo=True,
        extra_body={"top_k": 4, "repetition_penalty": 1.1},
    )
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny", prompt="hi", suffix="!")

    [sent] = [r for fake, _ in vllms for r in fake.requests]
    assert sent["logprobs"] == 2
    assert sent["echo"] is True
    assert sent["top_k"] == 4
    assert sent["repetition_penalty"] == 1.1
    assert caught.value.response.json()["error"]["param"] == "suffix"


def test_bookkeeping_parameters_are_accepted_and_not_sent_to_vllm(
    start_gateway: StartGateway, vllms: list[tuple[FakeVllm, FakeServer]]
) -> None:
    served = _gateway(start_gateway, vllms)
    served.deploy({"name": "tiny", "backend": "vllm", "base_model": BASE})

    served.client().chat.completions.create(
        model="tiny",
        messages=CHAT,
        max_tokens=2,
        user="user-1",
        metadata={"team": "search"},
        store=True,
        service_tier="flex",
        parallel_tool_calls=False,
    )

    [sent] = [r for fake, _ in vllms for r in fake.requests]
    assert not {"user", "metadata", "store", "service_tier"} & set(sent)
    assert sent["parallel_tool_calls"] is False  # vLLM honours it


def test_an_adapter_vllm_refuses_is_a_400_and_loads_nowhere(
    start_gateway: StartGateway, vllms: list[tuple[FakeVllm, FakeServer]], tmp_path: Path
) -> None:
    served = _gateway(start_gateway, vllms)
    response = served.admin(
        "POST",
        "/v1/deployments",
        json={"name": FT, "backend": "vllm", "base_model": BASE, "adapter": str(tmp_path)},
    )

    assert response.status_code == 400
    assert "No adapter found" in response.json()["error"]["message"]
    assert all(fake.loras == {} for fake, _ in vllms)
    assert served.admin("GET", "/v1/deployments").json()["data"] == []


def test_a_base_model_the_servers_do_not_serve_is_refused(
    start_gateway: StartGateway, vllms: list[tuple[FakeVllm, FakeServer]]
) -> None:
    served = _gateway(start_gateway, vllms)
    response = served.admin(
        "POST", "/v1/deployments", json={"name": "x", "backend": "vllm", "base_model": "other"}
    )

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "base_model"


def test_a_5xx_before_the_first_byte_is_retried_on_another_instance(
    start_gateway: StartGateway, vllms: list[tuple[FakeVllm, FakeServer]]
) -> None:
    served = _gateway(start_gateway, vllms)
    served.deploy({"name": "tiny", "backend": "vllm", "base_model": BASE})
    (broken, _), (healthy, _) = vllms
    broken.fail_next = 100

    client = served.client()
    for stream in (False, True, False, True):
        if stream:
            text = "".join(
                c.choices[0].delta.content or ""
                for c in client.chat.completions.create(
                    model="tiny", messages=CHAT, max_tokens=2, stream=True
                )
            )
        else:
            text = (
                client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)
                .choices[0]
                .message.content
                or ""
            )
        assert text == "Forgeline serves"

    assert len(healthy.requests) == 4
    assert len(broken.requests) >= 1  # it was tried, failed, and the request moved on
    assert 'reason="status_5xx"' in served.metrics()


def test_when_every_instance_fails_the_client_gets_502(
    start_gateway: StartGateway, vllms: list[tuple[FakeVllm, FakeServer]]
) -> None:
    served = _gateway(start_gateway, vllms)
    served.deploy({"name": "tiny", "backend": "vllm", "base_model": BASE})
    for fake, _ in vllms:
        fake.fail_next = 1

    with pytest.raises(openai.APIStatusError) as caught:
        served.client().chat.completions.create(model="tiny", messages=CHAT)

    assert caught.value.status_code == 502
    error = caught.value.response.json()["error"]
    assert error["code"] == "bad_gateway"
    assert "EngineCore" not in error["message"]  # the backend's own words stay inside
    assert sum(len(fake.requests) for fake, _ in vllms) == 2  # each instance tried once


def _hold_stream(served: Served, model: str, opened: threading.Event) -> threading.Thread:
    def run() -> None:
        with httpx.stream(
            "POST",
            f"{served.url}/v1/chat/completions",
            json={"model": model, "messages": CHAT, "max_tokens": 10, "stream": True},
            headers={"Authorization": f"Bearer {served.inference_key}"},
            timeout=30,
            trust_env=False,
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    opened.set()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_past_the_in_flight_bound_clients_get_429_with_retry_after(
    start_gateway: StartGateway, vllms: list[tuple[FakeVllm, FakeServer]]
) -> None:
    (fake, server) = vllms[0]
    fake.chunk_delay = 0.2  # ten tokens: a stream stays open two seconds
    served = start_gateway({"retry_after_seconds": 3})
    served.deploy(
        {
            "name": "tiny",
            "backend": "vllm",
            "base_model": BASE,
            "urls": [server.url],
            "max_in_flight": 1,
        }
    )
    opened = threading.Event()
    holder = _hold_stream(served, "tiny", opened)
    assert opened.wait(10)

    with pytest.raises(openai.RateLimitError) as caught:
        served.client().chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)
    holder.join(30)
    after = served.client().chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)

    assert caught.value.response.headers["retry-after"] == "3"
    error = caught.value.response.json()["error"]
    assert error["type"] == "rate_limit_error"
    assert error["code"] == "rate_limit_exceeded"
    assert len(fake.requests) == 2  # the refused request never reached the backend
    assert after.choices


def test_streams_spread_over_instances_by_least_in_flight(
    start_gateway: StartGateway, vllms: list[tuple[FakeVllm, FakeServer]]
) -> None:
    for fake, _ in vllms:
        fake.chunk_delay = 0.1
    served = _gateway(start_gateway, vllms)
    served.deploy({"name": "tiny", "backend": "vllm", "base_model": BASE})
    events = [threading.Event() for _ in range(4)]
    threads = []
    for event in events:
        threads.append(_hold_stream(served, "tiny", event))
        assert event.wait(10)  # each starts while the earlier ones are still streaming
    for thread in threads:
        thread.join(30)

    assert [len(fake.requests) for fake, _ in vllms] == [2, 2]


@pytest.mark.parametrize("leaves", ["after the first event", "before the first event"])
def test_a_client_leaving_a_stream_cancels_it_at_vllm(
    start_gateway: StartGateway, vllms: list[tuple[FakeVllm, FakeServer]], leaves: str
) -> None:
    (fake, server) = vllms[0]
    after_first = leaves == "after the first event"
    if after_first:
        fake.chunk_delay = 0.2
    else:
        fake.first_event_delay = 30.0  # a long prompt: only the status line comes back
    served = start_gateway()
    served.deploy({"name": "tiny", "backend": "vllm", "base_model": BASE, "urls": [server.url]})

    with httpx.stream(
        "POST",
        f"{served.url}/v1/chat/completions",
        json={"model": "tiny", "messages": CHAT, "max_tokens": 50, "stream": True},
        headers={"Authorization": f"Bearer {served.inference_key}"},
        trust_env=False,
    ) as response:
        assert response.status_code == 200
        if after_first:
            next(response.iter_lines())

    deadline = time.monotonic() + 10
    while fake.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.cancelled == 1
    route = served.gateway.app.state.router.get("tiny")
    assert route.instances[0].in_flight == 0
    assert 'status="499"' in served.metrics()


def test_adapter_deployments_survive_a_gateway_restart(
    start_gateway: StartGateway,
    vllms: list[tuple[FakeVllm, FakeServer]],
    adapter_dir: Path,
    tmp_path: Path,
) -> None:
    database = tmp_path / "shared.sqlite3"
    first = _gateway_at(start_gateway, vllms, database)
    first.deploy({"name": FT, "backend": "vllm", "base_model": BASE, "adapter": str(adapter_dir)})
    first.gateway.stop()

    second = _gateway_at(start_gateway, vllms, database)
    answer = second.client().chat.completions.create(model=FT, messages=CHAT, max_tokens=2)

    assert answer.model == FT
    assert all(fake.loras == {FT: str(adapter_dir)} for fake, _ in vllms)


def _gateway_at(
    start: StartGateway, vllms: list[tuple[FakeVllm, FakeServer]], database: Path
) -> Served:
    return start({"vllm_urls": [s.url for _, s in vllms]}, database=database)


def test_a_client_leaving_a_non_streamed_request_closes_it_at_the_backend(
    start_gateway: StartGateway, vllms: list[tuple[FakeVllm, FakeServer]]
) -> None:
    (fake, server) = vllms[0]
    fake.answer_delay = 10.0
    served = start_gateway()
    served.deploy({"name": "tiny", "backend": "vllm", "base_model": BASE, "urls": [server.url]})

    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{served.url}/v1/chat/completions",
            json={"model": "tiny", "messages": CHAT},
            headers={"Authorization": f"Bearer {served.inference_key}"},
            timeout=httpx.Timeout(30, read=0.3),
            trust_env=False,
        )

    deadline = time.monotonic() + 5  # far less than the 10 s the answer would take
    while fake.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.cancelled == 1
    route = served.gateway.app.state.router.get("tiny")
    assert route.instances[0].in_flight == 0
    assert 'status="499"' in served.metrics()


def test_admission_is_sized_to_max_num_seqs(
    start_gateway: StartGateway, vllms: list[tuple[FakeVllm, FakeServer]]
) -> None:
    """vLLM does not report how many sequences it runs at once; a deployment that states it
    (`max_num_seqs`) is admitted that many and the gateway's queue more, then a 429."""
    (fake, server) = vllms[0]
    fake.chunk_delay = 0.2  # ten tokens: a stream stays open two seconds
    served = start_gateway({"queue_per_instance": 1})
    served.deploy(
        {
            "name": "tiny",
            "backend": "vllm",
            "base_model": BASE,
            "urls": [server.url],
            "max_num_seqs": 1,
        }
    )
    assert [i.limit for i in served.gateway.app.state.router.get("tiny").instances] == [2]
    opened = [threading.Event(), threading.Event()]
    holders = [_hold_stream(served, "tiny", event) for event in opened]
    assert all(event.wait(10) for event in opened)

    with pytest.raises(openai.RateLimitError):
        served.client().chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)
    for holder in holders:
        holder.join(30)

    assert len(fake.requests) == 2  # the refused request never reached vLLM
    assert served.client().chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)
