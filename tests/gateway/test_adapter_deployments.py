"""Adapter deployments on a shared llama.cpp base (issue 21): several fine-tunes of the tiny model
served as GGUF adapters by the base deployment's one llama-server process, each request choosing
its adapter; adding or removing one restarts the base blue-green without failing a request in
flight; a restarted gateway places the base with its adapters again.

Everything is real: GGUF adapters converted by the pinned llama.cpp (random LoRA B matrices, so
each answers differently, `tests/gguf_adapters.py`), llama-server processes the gateway starts.
"""

from __future__ import annotations

import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from gguf_adapters import GgufAdapter, make_gguf_adapter

from forgeline_gateway.backends.llamacpp import LlamaCppBackend
from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.tinymodel import TinyModel

from .conftest import Served, StartGateway

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

QUESTION = "hello"


@pytest.fixture(scope="module")
def adapters(
    tiny_model: TinyModel, llamacpp_toolchain: Toolchain, tmp_path_factory: pytest.TempPathFactory
) -> tuple[GgufAdapter, GgufAdapter]:
    """Two GGUF adapters of the tiny model that answer differently from it and each other."""
    work = tmp_path_factory.mktemp("gguf-adapters")
    return (
        make_gguf_adapter(tiny_model.path, work, llamacpp_toolchain, seed=1),
        make_gguf_adapter(tiny_model.path, work, llamacpp_toolchain, seed=2),
    )


def _backend(served: Served) -> LlamaCppBackend:
    backend = served.gateway.app.state.manager.backends["llamacpp"]
    assert isinstance(backend, LlamaCppBackend)
    return backend


def _settle(served: Served) -> None:
    """Wait until the old processes of restarted bases have drained and stopped."""
    served.gateway.call(served.gateway.app.state.manager.settle())


def _processes(served: Served) -> int:
    _settle(served)
    return len(_backend(served).running_processes())


def _base(gguf: Path, name: str = "tiny-base", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "backend": "llamacpp",
        "gguf": str(gguf),
        "parallel": 2,
        "metadata": {"base": "tiny-llama", "version": "tiny-llama-gguf:1"},
        **extra,
    }


def _adapter(name: str, adapter: GgufAdapter, base: str = "tiny-base") -> dict[str, Any]:
    return {"name": name, "backend": "llamacpp", "base": base, "lora": [str(adapter.gguf)]}


def _ask(served: Served, model: str) -> str:
    answer = served.client().chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=16,
        temperature=0,
    )
    assert answer.model == model
    return answer.choices[0].message.content or ""


def test_adapters_share_one_base_process_and_each_answers_as_itself(
    start_gateway: StartGateway, tiny_gguf: Path, adapters: tuple[GgufAdapter, GgufAdapter]
) -> None:
    first, second = adapters
    served = start_gateway()
    served.deploy(_base(tiny_gguf))
    base_answer = _ask(served, "tiny-base")
    # The same adapter applied for every request by a process of its own: the reference.
    served.deploy(_base(tiny_gguf, "a-alone", lora=[str(first.gguf)], parallel=1))
    first_alone = _ask(served, "a-alone")
    served.admin("DELETE", "/v1/deployments/a-alone")

    created = served.deploy(_adapter("ft:tiny:a", first))
    served.deploy(_adapter("ft:tiny:b", second))

    assert created["spec"]["base"] == "tiny-base"
    assert created["instances"] == 1
    assert _processes(served) == 1  # one llama-server for the base and both fine-tunes
    answers = {name: _ask(served, name) for name in ("tiny-base", "ft:tiny:a", "ft:tiny:b")}
    assert answers["tiny-base"] == base_answer  # the base answers as the base
    assert answers["ft:tiny:a"] == first_alone  # an adapter as if applied alone
    assert len(set(answers.values())) == 3
    # Concurrent requests for all three, on the same process, each get their own answer.
    with ThreadPoolExecutor(6) as pool:
        names = list(answers) * 4
        assert list(pool.map(lambda name: _ask(served, name), names)) == [
            answers[name] for name in names
        ]

    models = {m.id: m.model_dump() for m in served.client().models.list().data}
    assert set(models) == set(answers)
    assert models["ft:tiny:a"]["base_deployment"] == "tiny-base"
    assert models["ft:tiny:a"]["metadata"]["base"] == "tiny-base"
    assert models["tiny-base"]["base_deployment"] is None
    shown = served.admin("GET", "/v1/deployments/tiny-base").json()
    assert shown["adapters"] == ["ft:tiny:a", "ft:tiny:b"]
    llamacpp = {"backend": "llamacpp"}
    assert served.sample("forgeline_gateway_base_adapters", base="tiny-base", **llamacpp) == 2
    assert served.sample("forgeline_gateway_adapter_attach_seconds_count", **llamacpp) == 2

    refused = served.admin("DELETE", "/v1/deployments/tiny-base")
    assert refused.status_code == 400
    assert "ft:tiny:a, ft:tiny:b" in refused.json()["error"]["message"]

    assert served.admin("DELETE", "/v1/deployments/ft:tiny:a").status_code == 204
    assert _ask(served, "ft:tiny:b") == answers["ft:tiny:b"]
    assert _ask(served, "tiny-base") == base_answer
    assert served.admin("GET", "/v1/deployments/ft:tiny:a").status_code == 404
    assert served.sample("forgeline_gateway_base_adapters", base="tiny-base", **llamacpp) == 1
    assert _processes(served) == 1
    assert served.admin("DELETE", "/v1/deployments/ft:tiny:b").status_code == 204
    assert served.admin("DELETE", "/v1/deployments/tiny-base").status_code == 204
    assert _processes(served) == 0


def _stream(
    served: Served,
    model: str,
    lines: list[str],
    opened: threading.Event,
    resume: threading.Event,
) -> None:
    """A long streamed answer (2000 tokens, its end of text ignored), each line kept; after the
    first line it stops reading until `resume` is set. With a small receive buffer that holds
    the gateway's relay, and so the request, in flight however fast the tokens come."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 2000,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {served.inference_key}"}
    transport = httpx.HTTPTransport(
        socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER_BYTES)]
    )
    with (
        httpx.Client(transport=transport, timeout=120, trust_env=False) as client,
        client.stream(
            "POST", f"{served.url}/v1/chat/completions", json=body, headers=headers
        ) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line:
                lines.append(line)
                if not opened.is_set():
                    opened.set()
                    assert resume.wait(120)


#: Far less than the stream's ~300 KB, so the gateway cannot hand it all to the kernel at once.
_RECEIVE_BUFFER_BYTES = 4096


def test_a_stream_to_one_adapter_finishes_while_another_is_added(
    start_gateway: StartGateway, tiny_gguf: Path, adapters: tuple[GgufAdapter, GgufAdapter]
) -> None:
    first, second = adapters
    served = start_gateway()
    served.deploy(_base(tiny_gguf, parallel=1, context_size=2048))
    served.deploy(_adapter("ft:tiny:a", first))
    old = _backend(served).processes("tiny-base")
    lines: list[str] = []
    opened, resume = threading.Event(), threading.Event()
    streaming = threading.Thread(target=_stream, args=(served, "ft:tiny:a", lines, opened, resume))
    streaming.start()
    try:
        assert opened.wait(60)
        served.deploy(_adapter("ft:tiny:b", second))
        # The switch happened while the stream was under way, on the old process.
        assert lines[-1] != "data: [DONE]"
        assert all(p.running for p in old)
        assert _ask(served, "ft:tiny:b")
    finally:
        resume.set()
        streaming.join(120)

    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all("error" not in chunk for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")) > 100
    assert _processes(served) == 1
    assert not any(p.running for p in old)  # drained, then stopped


def test_a_base_is_restored_with_its_adapters_after_a_restart(
    start_gateway: StartGateway,
    tiny_gguf: Path,
    adapters: tuple[GgufAdapter, GgufAdapter],
    tmp_path: Path,
) -> None:
    first, second = adapters
    database = tmp_path / "shared.sqlite3"
    before = start_gateway(database=database)
    before.deploy(_base(tiny_gguf))
    before.deploy(_adapter("ft:tiny:a", first))
    before.deploy(_adapter("ft:tiny:b", second))
    answers = {name: _ask(before, name) for name in ("tiny-base", "ft:tiny:a", "ft:tiny:b")}
    before.gateway.stop()

    after = start_gateway(database=database)

    assert {name: _ask(after, name) for name in answers} == answers
    assert _processes(after) == 1  # placed once, with both adapters
    listed = after.admin("GET", "/v1/deployments").json()["data"]
    assert {d["name"]: d["status"] for d in listed} == dict.fromkeys(answers, "ready")
    assert after.admin("GET", "/v1/deployments/tiny-base").json()["adapters"] == [
        "ft:tiny:a",
        "ft:tiny:b",
    ]


@pytest.fixture
def served_base(start_gateway: StartGateway, tiny_gguf: Path) -> Served:
    served = start_gateway()
    served.deploy(_base(tiny_gguf))
    served.deploy(
        {"name": "embed", "backend": "llamacpp", "gguf": str(tiny_gguf), "embeddings": True}
    )
    return served


@pytest.mark.parametrize(
    ("spec", "param", "words"),
    [
        ({"base": "tiny-base"}, None, "needs 'lora'"),
        ({"base": "tiny-base", "lora": ["x.gguf"], "gguf": "y.gguf"}, None, "leave out"),
        ({"base": "tiny-base", "lora": ["x.gguf"], "replicas": 2}, None, "'replicas'"),
        ({"base": "nothing", "lora": ["x.gguf"]}, "base", "does not exist"),
        ({"base": "embed", "lora": ["x.gguf"]}, "base", "cannot carry adapters"),
        ({"base": "tiny-base", "lora": ["/nonexistent/x.gguf"]}, "lora[0]", "outside"),
    ],
)
def test_an_adapter_deployment_that_cannot_be_served_is_400(
    served_base: Served, spec: dict[str, Any], param: str | None, words: str
) -> None:
    response = served_base.admin(
        "POST", "/v1/deployments", json={"name": "ft:x", "backend": "llamacpp", **spec}
    )

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert words in error["message"]
    if param is not None:
        assert error["param"] == param
    assert served_base.admin("GET", "/v1/deployments/ft:x").status_code == 404
    assert served_base.admin("GET", "/v1/deployments/tiny-base").json()["adapters"] == []
