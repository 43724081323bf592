"""The Ollama adapter against the Ollama contract fake: a GGUF pushed as a blob, created as a
model, served through Ollama's OpenAI API under the public name, deleted on undeploy."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest
from fakes.ollama import FakeOllama
from fakes.server import FakeServer
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from forgeline_gateway.backends.ollama import OllamaBackend, ollama_model_name

from .conftest import Served, StartGateway

CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
FT = "ft:tiny:acme:support:abc123"
TEMPLATE = "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"


@pytest.fixture
def ollama() -> Iterator[tuple[FakeOllama, FakeServer]]:
    fake = FakeOllama()
    server = FakeServer(fake.app).start()
    yield fake, server
    server.stop()


@pytest.fixture
def with_ollama(start_gateway: StartGateway, ollama: tuple[FakeOllama, FakeServer]) -> Served:
    return start_gateway({"ollama_url": ollama[1].url})


def _spec(gguf: Path, name: str = FT) -> dict[str, object]:
    return {
        "name": name,
        "backend": "ollama",
        "gguf": str(gguf),
        "template": TEMPLATE,
        "parameters": {"stop": ["<|im_end|>"], "num_ctx": 2048},
        "metadata": {"base": "tiny", "quantization": "f16"},
    }


def test_a_gguf_is_pushed_created_and_served_under_the_public_name(
    with_ollama: Served, ollama: tuple[FakeOllama, FakeServer], tiny_gguf: Path
) -> None:
    fake, _ = ollama
    deployment = with_ollama.deploy(_spec(tiny_gguf))

    digest = "sha256:" + hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    upstream = ollama_model_name(FT)
    assert deployment["status"] == "ready"
    assert fake.blobs == {digest: tiny_gguf.stat().st_size}
    assert fake.models[upstream]["template"] == TEMPLATE
    assert fake.models[upstream]["parameters"] == {"stop": ["<|im_end|>"], "num_ctx": 2048}

    client = with_ollama.client()
    answer = client.chat.completions.create(model=FT, messages=CHAT, max_completion_tokens=3)
    chunks = list(
        client.chat.completions.create(
            model=FT,
            messages=CHAT,
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    # Ollama knows the model by its own name; the client only ever sees the public one.
    assert answer.model == FT
    assert answer.choices[0].message.content == "Forgeline serves this"
    assert all(c.model == FT for c in chunks)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    first = fake.requests[0]
    assert first["model"] == upstream
    assert first["max_tokens"] == 3  # max_completion_tokens, in the field Ollama reads
    assert "max_completion_tokens" not in first


def test_the_same_gguf_is_pushed_once(
    with_ollama: Served, ollama: tuple[FakeOllama, FakeServer], tiny_gguf: Path
) -> None:
    fake, _ = ollama
    with_ollama.deploy(_spec(tiny_gguf, "one"))
    with_ollama.deploy(_spec(tiny_gguf, "two"))

    assert fake.blob_uploads == 1
    assert set(fake.models) == {ollama_model_name("one"), ollama_model_name("two")}


def test_what_ollama_cannot_honour_is_refused_before_it_is_sent(
    with_ollama: Served, ollama: tuple[FakeOllama, FakeServer], tiny_gguf: Path
) -> None:
    fake, _ = ollama
    with_ollama.deploy(_spec(tiny_gguf))
    client = with_ollama.client()
    refused: dict[str, Callable[[], object]] = {
        "n": lambda: client.chat.completions.create(model=FT, messages=CHAT, n=2),
        "logprobs": lambda: client.chat.completions.create(model=FT, messages=CHAT, logprobs=True),
        "tool_choice": lambda: client.chat.completions.create(
            model=FT, messages=CHAT, tool_choice="none"
        ),
        "prompt": lambda: client.completions.create(model=FT, prompt=["a", "b"]),
        "echo": lambda: client.completions.create(model=FT, prompt="a", echo=True),
    }

    for param, call in refused.items():
        with pytest.raises(openai.BadRequestError) as caught:
            call()
        assert caught.value.response.json()["error"]["param"] == param
    assert fake.requests == []
    # What Ollama does support is passed on.
    client.completions.create(model=FT, prompt="a", suffix="b", seed=3, max_tokens=2)
    assert fake.requests[-1]["suffix"] == "b"


def test_bookkeeping_parameters_are_accepted_and_not_sent_to_ollama(
    with_ollama: Served, ollama: tuple[FakeOllama, FakeServer], tiny_gguf: Path
) -> None:
    fake, _ = ollama
    with_ollama.deploy(_spec(tiny_gguf))
    client = with_ollama.client()
    tool: ChatCompletionToolParam = {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "object", "properties": {}}},
    }

    client.chat.completions.create(
        model=FT,
        messages=CHAT,
        max_tokens=2,
        user="user-1",
        metadata={"team": "search"},
        store=False,
        service_tier="auto",
        parallel_tool_calls=False,
    )
    client.chat.completions.create(
        model=FT, messages=CHAT, max_tokens=2, tools=[tool], tool_choice="auto"
    )
    with pytest.raises(openai.BadRequestError) as parallel:
        client.chat.completions.create(
            model=FT, messages=CHAT, tools=[tool], parallel_tool_calls=False
        )

    plain, with_tools = fake.requests
    assert set(plain) == {"model", "messages", "max_tokens"}
    assert set(with_tools) == {"model", "messages", "max_tokens", "tools"}
    # With tools, one call at most is something Ollama's API cannot be asked for.
    assert parallel.value.response.json()["error"]["param"] == "parallel_tool_calls"


def test_undeploy_deletes_the_model_from_ollama(
    with_ollama: Served, ollama: tuple[FakeOllama, FakeServer], tiny_gguf: Path
) -> None:
    fake, _ = ollama
    with_ollama.deploy(_spec(tiny_gguf))

    assert with_ollama.admin("DELETE", f"/v1/deployments/{FT}").status_code == 204
    assert fake.models == {}
    with pytest.raises(openai.NotFoundError):
        with_ollama.client().chat.completions.create(model=FT, messages=CHAT)


def test_a_missing_gguf_is_a_400_naming_the_file(with_ollama: Served, tmp_path: Path) -> None:
    response = with_ollama.admin("POST", "/v1/deployments", json=_spec(tmp_path / "missing.gguf"))

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "gguf"
    assert "missing.gguf" in response.json()["error"]["message"]


def test_an_ollama_deployment_needs_an_ollama_server(
    start_gateway: StartGateway, tiny_gguf: Path
) -> None:
    served = start_gateway()  # no FORGELINE_GATEWAY_OLLAMA_URL
    response = served.admin("POST", "/v1/deployments", json=_spec(tiny_gguf))

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "url"


def test_ps_lists_what_ollama_has_loaded(
    with_ollama: Served, ollama: tuple[FakeOllama, FakeServer], tiny_gguf: Path
) -> None:
    _, server = ollama
    with_ollama.deploy(_spec(tiny_gguf))
    backend = with_ollama.gateway.app.state.manager.backends["ollama"]
    assert isinstance(backend, OllamaBackend)
    assert with_ollama.gateway.call(backend.running(server.url)) == []

    with_ollama.client().chat.completions.create(model=FT, messages=CHAT, max_tokens=1)

    assert with_ollama.gateway.call(backend.running(server.url)) == [ollama_model_name(FT)]


def test_model_names_ollama_accepts() -> None:
    name = ollama_model_name("ft:Tiny:acme:support:abc123")
    assert name.startswith("forgeline/ft-tiny-acme-support-abc123-")
    assert name.endswith(":latest")
    assert ollama_model_name("a:b") != ollama_model_name("a-b")


def test_admission_is_sized_to_the_parallel_the_deployment_states(
    start_gateway: StartGateway, ollama: tuple[FakeOllama, FakeServer], tiny_gguf: Path
) -> None:
    """Ollama does not report OLLAMA_NUM_PARALLEL; a deployment that states it (`parallel`) is
    admitted that many requests and the gateway's queue more, then a 429 with Retry-After."""
    fake, server = ollama
    fake.chunk_delay = 0.2
    served = start_gateway({"ollama_url": server.url, "queue_per_instance": 0})
    served.deploy({**_spec(tiny_gguf), "parallel": 1})
    assert [i.limit for i in served.gateway.app.state.router.get(FT).instances] == [1]

    with served.client().chat.completions.create(
        model=FT, messages=CHAT, max_tokens=10, stream=True
    ) as stream:
        next(iter(stream))
        with pytest.raises(openai.RateLimitError) as caught:
            served.client().chat.completions.create(model=FT, messages=CHAT, max_tokens=2)
        list(stream)

    assert caught.value.response.headers["retry-after"]
    assert served.client().chat.completions.create(model=FT, messages=CHAT, max_tokens=2)
