"""Routing over real llama-server processes: failover, no retry once streaming, a disconnect that
cancels the backend's work, and the per-request timeout. (Backpressure and the spreading of load
need a backend slower than the tiny model: they are tested against the vLLM fake.)"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from forgeline_gateway.backends.llamacpp import LlamaCppBackend
from forgeline_gateway.backends.llamacpp_process import LlamaServerProcess

from .conftest import Served, StartGateway

CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
LONG = 1900  # tokens: longer than a 50 ms request timeout takes to pass
# Tokens: seconds of generation, for a test that must act mid-stream. The tiny model writes LONG
# tokens in under a second, and a busy machine can take longer than that between reading the first
# event and acting on it (a kill, a disconnect), so a LONG stream may already be over by then.
VERY_LONG = 16000
DEADLINE_S = 30.0


def _spec(gguf: Path, **extra: Any) -> dict[str, Any]:
    # One slot with the whole context, so a long generation is not cut by the context size.
    return {
        "name": "tiny",
        "backend": "llamacpp",
        "gguf": str(gguf),
        "context_size": 2048,
        "parallel": 1,
        **extra,
    }


def _processes(served: Served, name: str = "tiny") -> list[LlamaServerProcess]:
    backend = served.gateway.app.state.manager.backends["llamacpp"]
    assert isinstance(backend, LlamaCppBackend)
    return backend.processes(name)


def _wait_for(
    condition: Callable[[], bool], what: str, deadline: float = DEADLINE_S, log: str = ""
) -> None:
    """Poll a real signal until it holds, failing after `deadline` seconds."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}\n{log}")


def _cancelled(process: LlamaServerProcess) -> bool:
    return any("cancel task" in line for line in list(process.log_tail))


def _launched(process: LlamaServerProcess) -> int:
    return sum("launch_slot_" in line for line in list(process.log_tail))


def _stream_request(served: Served, max_tokens: int = VERY_LONG) -> dict[str, Any]:
    return {
        "method": "POST",
        "url": f"{served.url}/v1/chat/completions",
        # ignore_eos: the tiny model may end an answer at any token; these must run long.
        "json": {
            "model": "tiny",
            "messages": CHAT,
            "max_tokens": max_tokens,
            "stream": True,
            "ignore_eos": True,
        },
        "headers": {"Authorization": f"Bearer {served.inference_key}"},
    }


def test_a_dead_instance_is_skipped_and_requests_still_succeed(
    start_gateway: StartGateway, tiny_gguf: Path
) -> None:
    served = start_gateway()
    served.deploy(_spec(tiny_gguf, replicas=2))
    victim, survivor = _processes(served)
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    _wait_for(lambda: not victim.running, "the killed llama-server to exit")

    client = served.client()
    answers = [
        client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2) for _ in range(6)
    ]

    assert all(a.choices[0].message.content is not None for a in answers)
    # llama-server's log reaches us through a reader thread, a moment after each answer.
    _wait_for(lambda: _launched(survivor) >= 6, "the survivor's log to show six requests")
    assert _launched(survivor) == 6
    assert served.sample("forgeline_gateway_upstream_errors_total", reason="connect") >= 1
    assert served.sample("forgeline_gateway_requests_total", status="200") == 6


def test_all_instances_down_is_503_without_the_backend_address(
    start_gateway: StartGateway, tiny_gguf: Path
) -> None:
    served = start_gateway()
    served.deploy(_spec(tiny_gguf))
    [process] = _processes(served)
    port = process.port
    assert process.pid is not None
    os.kill(process.pid, signal.SIGKILL)
    _wait_for(lambda: not process.running, "the killed llama-server to exit")

    with pytest.raises(openai.InternalServerError) as caught:
        served.client().chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)

    assert caught.value.status_code == 503
    error = caught.value.response.json()["error"]
    assert error["type"] == "server_error"
    assert error["code"] == "backend_unavailable"
    assert str(port) not in caught.value.response.text
    assert "127.0.0.1" not in caught.value.response.text


def test_no_retry_once_the_stream_has_started(start_gateway: StartGateway, tiny_gguf: Path) -> None:
    served = start_gateway()
    served.deploy(_spec(tiny_gguf, replicas=2, context_size=VERY_LONG + 256))
    processes = _processes(served)
    route = served.gateway.app.state.router.get("tiny")

    with httpx.stream(**_stream_request(served), trust_env=False, timeout=60) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        [busy] = [i for i in route.instances if i.in_flight == 1]
        serving = next(p for p in processes if p.url == busy.url)
        idle = next(p for p in processes if p is not serving)
        assert serving.pid is not None
        os.kill(serving.pid, signal.SIGKILL)
        rest = [line for line in lines if line.startswith("data: ")]

    # The client is told the answer is incomplete; nothing was sent to the other instance.
    assert rest, "the stream ended without a word"
    last = json.loads(rest[-1][len("data: ") :])
    assert last["error"]["code"] == "bad_gateway"
    assert _launched(idle) == 0
    assert served.sample("forgeline_gateway_upstream_errors_total", reason="broken_stream") == 1


def test_a_client_that_leaves_a_stream_cancels_the_backend_work(
    start_gateway: StartGateway, tiny_gguf: Path
) -> None:
    served = start_gateway()
    served.deploy(_spec(tiny_gguf, context_size=VERY_LONG + 256))
    [process] = _processes(served)

    with httpx.stream(**_stream_request(served), trust_env=False, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                break
    # Leaving the `with` closed the connection mid-stream.

    _wait_for(
        lambda: _cancelled(process),
        "llama-server to cancel the generation",
        log="\n".join(list(process.log_tail)[-30:]),
    )
    _wait_for(
        lambda: served.sample("forgeline_gateway_in_flight_requests", model="tiny") == 0,
        "the gateway to finish the request",
    )
    assert served.sample("forgeline_gateway_requests_total", status="499") == 1
    assert served.gateway.app.state.router.get("tiny").instances[0].in_flight == 0


def test_a_request_past_its_timeout_is_504(start_gateway: StartGateway, tiny_gguf: Path) -> None:
    served = start_gateway({"request_timeout_seconds": 0.05})
    served.deploy(_spec(tiny_gguf))
    route = served.gateway.app.state.router.get("tiny")

    with pytest.raises(openai.APIStatusError) as caught:
        served.client().chat.completions.create(
            model="tiny", messages=CHAT, max_tokens=LONG, extra_body={"ignore_eos": True}
        )

    assert caught.value.status_code == 504
    assert caught.value.response.json()["error"]["code"] == "backend_timeout"
    assert route.instances[0].in_flight == 0
    assert served.sample("forgeline_gateway_upstream_errors_total", reason="timeout") == 1
    # llama-server itself finishes a non-streamed generation whose connection was closed (it
    # only notices a closed connection when it writes a streamed chunk); the gateway's part,
    # closing it, is checked against the vLLM fake in test_vllm.py.


def test_many_concurrent_streams_all_complete(served: Served) -> None:
    """Sixteen SDK clients streaming at once through two instances each get a whole answer."""
    results: list[str] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            stream = served.client().chat.completions.create(
                model="tiny", messages=CHAT, max_tokens=8, stream=True
            )
            chunks = list(stream)
            results.append(chunks[-1].choices[0].finish_reason or "")
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=one) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    # Every stream ended with OpenAI's final chunk. Sampling from the random tiny model may hit
    # <|im_end|> within 8 tokens ("stop") or not ("length"): both are a whole answer.
    assert len(results) == 16
    assert set(results) <= {"length", "stop"}


def test_admission_is_sized_to_the_server_slots_and_overload_is_a_fast_429(
    start_gateway: StartGateway, tiny_gguf: Path
) -> None:
    """Two slots and a queue of one admit three streams; the fourth is refused at once (it
    would wait inside llama-server for a slot), and never reaches the server. An attached
    llama-server is sized by the slots it reports in /props."""
    served = start_gateway({"queue_per_instance": 1, "retry_after_seconds": 2})
    served.deploy(_spec(tiny_gguf, parallel=2, context_size=2 * 2300))
    [process] = _processes(served)
    served.deploy({"name": "attached", "backend": "llamacpp", "urls": [process.url]})
    router = served.gateway.app.state.router
    [instance] = router.get("tiny").instances
    assert instance.limit == 3
    assert [i.limit for i in router.get("attached").instances] == [3]

    release = threading.Event()
    # 20 top logprobs a token make a stream of the tiny model's 2,000 tokens (its context
    # caps a slot at 2,048) about 4 MB, more than the socket buffers between the gateway and
    # a client that does not read take in, so the relay blocks and the stream stays in flight.
    body = {**_stream_request(served)["json"], "max_tokens": 2000}
    body |= {"logprobs": True, "top_logprobs": 20}
    headers = {"Authorization": f"Bearer {served.inference_key}"}

    def hold() -> None:
        # Unread (a small receive buffer), a stream stays in flight until it is closed.
        transport = httpx.HTTPTransport(
            socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)]
        )
        with (
            httpx.Client(transport=transport, timeout=120, trust_env=False) as client,
            client.stream("POST", f"{served.url}/v1/chat/completions", json=body, headers=headers),
        ):
            assert release.wait(120)  # then closed unread: the gateway cancels it

    holders = [threading.Thread(target=hold) for _ in range(3)]
    try:
        for holder in holders:
            holder.start()
        _wait_for(lambda: instance.in_flight == 3, "three streams in flight")
        started = time.monotonic()
        refused = httpx.post(
            f"{served.url}/v1/chat/completions",
            json={"model": "tiny", "messages": CHAT, "max_tokens": 2},
            headers=headers,
            timeout=30,
        )
        waited = time.monotonic() - started
        in_flight_after = instance.in_flight
    finally:
        release.set()
        for holder in holders:
            holder.join(120)

    assert refused.status_code == 429, (
        f"{refused.text}\nin flight after it: {in_flight_after}; llama-server's log:\n"
        + "\n".join(list(process.log_tail)[-30:])
    )
    assert refused.headers["retry-after"] == "2"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert waited < 5, f"the refusal took {waited:.1f} s"  # not queued behind the streams
    _wait_for(lambda: instance.in_flight == 0, "the streams to finish")
    answer = served.client().chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)
    assert answer.choices
    # The three streams and the last answer reached llama-server; the refused request did not.
    _wait_for(lambda: _launched(process) >= 4, "llama-server's log to show four requests")
    assert _launched(process) == 4
