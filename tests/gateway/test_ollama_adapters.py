"""Adapter deployments on an Ollama base deployment (issue 21, the Ollama path): each fine-tune is
an Ollama model of its own, created ``from`` the base's model with its GGUF LoRA adapter
(``adapters``: a Modelfile's ``ADAPTER``), so the base's weights are stored once. Against the
Ollama contract fake (`fakes/ollama.py`, which follows Ollama's docs/api.md for ``from`` and
``adapters``); the fake does not read the GGUF files, so small stand-ins serve here.

Adding or removing one adapter creates or deletes only its own model: requests for the base and
the other adapters go on throughout."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fakes.ollama import FakeOllama
from fakes.server import FakeServer

from forgeline_gateway.backends.ollama import ollama_model_name

from .conftest import Served, StartGateway

BASE = "tiny-ollama"
FT_A = "ft:tiny:acme:a"
FT_B = "ft:tiny:acme:b"


@pytest.fixture
def ollama() -> Iterator[tuple[FakeOllama, FakeServer]]:
    fake = FakeOllama()
    server = FakeServer(fake.app).start()
    yield fake, server
    server.stop()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Stand-ins for the base GGUF and two GGUF adapters (each its own bytes, so its own blob);
    both adapters share a file name, as registry versions do."""
    written: dict[str, Path] = {}
    for key in ("base", "a", "b"):
        name = "model.gguf" if key == "base" else "adapter.gguf"
        path = tmp_path / key / name
        path.parent.mkdir()
        path.write_bytes(b"GGUF" + key.encode() * 64)
        written[key] = path
    return written


def _gateway(start: StartGateway, server: FakeServer, tmp_path: Path) -> Served:
    return start({"ollama_url": server.url}, database=tmp_path / "gateway.sqlite3")


def _base(files: dict[str, Path]) -> dict[str, Any]:
    return {
        "name": BASE,
        "backend": "ollama",
        "gguf": str(files["base"]),
        "template": "{{ .Prompt }}",
        "parameters": {"num_ctx": 2048},
        "metadata": {"quantization": "f16"},
    }


def _adapter(name: str, lora: Path, **extra: Any) -> dict[str, Any]:
    return {"name": name, "backend": "ollama", "base": BASE, "lora": [str(lora)], **extra}


def _digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _ask(served: Served, model: str) -> str:
    answer = served.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=3
    )
    assert answer.model == model  # Ollama's name for it never reaches the client
    return answer.choices[0].message.content or ""


def _deployed(served: Served, files: dict[str, Path]) -> None:
    served.deploy(_base(files))
    served.deploy(_adapter(FT_A, files["a"]))
    served.deploy(_adapter(FT_B, files["b"], system="You answer for team B."))


def test_each_adapter_is_an_ollama_model_from_the_base_and_answers_under_its_name(
    start_gateway: StartGateway,
    ollama: tuple[FakeOllama, FakeServer],
    files: dict[str, Path],
    tmp_path: Path,
) -> None:
    fake, server = ollama
    served = _gateway(start_gateway, server, tmp_path)
    _deployed(served, files)

    base_model = ollama_model_name(BASE)
    creates = {body["model"]: body for body in fake.creates}
    for name, key in ((FT_A, "a"), (FT_B, "b")):
        body = creates[ollama_model_name(name)]
        # docs/api.md's create: `from` the base's model, `adapters` the pushed GGUF adapter.
        assert body["from"] == base_model
        assert body["adapters"] == {"adapter.gguf": _digest(files[key])}
        assert "files" not in body
    # The base's weights were pushed once; each adapter once.
    assert fake.blob_uploads == 3
    # What the adapter does not set, Ollama keeps from the base; what it sets is its own.
    assert fake.models[ollama_model_name(FT_A)]["template"] == "{{ .Prompt }}"
    assert fake.models[ollama_model_name(FT_B)]["system"] == "You answer for team B."

    models = {m.id: m.model_dump() for m in served.client().models.list().data}
    assert set(models) == {BASE, FT_A, FT_B}
    assert models[FT_A]["metadata"]["base"] == BASE
    assert models[FT_B]["base_deployment"] == BASE
    assert models[BASE]["metadata"]["base"] is None

    answers = {name: _ask(served, name) for name in (BASE, FT_A, FT_B)}
    sent = [body["model"] for body in fake.requests]
    assert sent == [base_model, ollama_model_name(FT_A), ollama_model_name(FT_B)]
    assert answers[BASE] == "Forgeline serves this"
    assert answers[FT_A] == f"[{ollama_model_name(FT_A)}] Forgeline serves this"
    assert answers[FT_B] == f"[{ollama_model_name(FT_B)}] Forgeline serves this"

    # Routed to the base's instances: one bound on requests in flight to that Ollama server.
    router = served.gateway.app.state.manager.router
    assert router.get(FT_A).instances[0] is router.get(BASE).instances[0]
    shown = served.admin("GET", f"/v1/deployments/{BASE}").json()
    assert shown["adapters"] == [FT_A, FT_B]


def test_deleting_one_adapter_deletes_only_its_model_and_leaves_a_stream_of_another_whole(
    start_gateway: StartGateway,
    ollama: tuple[FakeOllama, FakeServer],
    files: dict[str, Path],
    tmp_path: Path,
) -> None:
    fake, server = ollama
    served = _gateway(start_gateway, server, tmp_path)
    _deployed(served, files)
    fake.chunk_delay = 0.05
    lines: list[str] = []
    opened = threading.Event()

    def stream() -> None:
        body = {
            "model": FT_B,
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 30,
            "stream": True,
        }
        headers = {"Authorization": f"Bearer {served.inference_key}"}
        with httpx.stream(
            "POST", f"{served.url}/v1/chat/completions", json=body, headers=headers, timeout=30
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                lines.append(line)
                opened.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert opened.wait(10)
    assert served.admin("DELETE", f"/v1/deployments/{FT_A}").status_code == 204
    reader.join(30)

    assert set(fake.models) == {ollama_model_name(BASE), ollama_model_name(FT_B)}
    events = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert len(text.split()) >= 25  # every word arrived
    fake.chunk_delay = 0.0
    with pytest.raises(openai.NotFoundError):
        _ask(served, FT_A)
    assert _ask(served, FT_B).startswith(f"[{ollama_model_name(FT_B)}]")
    assert _ask(served, BASE) == "Forgeline serves this"
    assert served.admin("GET", f"/v1/deployments/{BASE}").json()["adapters"] == [FT_B]


def test_the_base_cannot_be_deleted_while_adapters_use_it(
    start_gateway: StartGateway,
    ollama: tuple[FakeOllama, FakeServer],
    files: dict[str, Path],
    tmp_path: Path,
) -> None:
    fake, server = ollama
    served = _gateway(start_gateway, server, tmp_path)
    _deployed(served, files)

    refused = served.admin("DELETE", f"/v1/deployments/{BASE}")

    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["message"] == (
        f"the deployment '{BASE}' is the base of the adapter deployments {FT_A}, {FT_B}: "
        "delete them first"
    )
    assert ollama_model_name(BASE) in fake.models
    assert _ask(served, FT_A)
    for name in (FT_A, FT_B, BASE):
        assert served.admin("DELETE", f"/v1/deployments/{name}").status_code == 204
    assert fake.models == {}


def test_a_restarted_gateway_creates_the_base_and_its_adapters_again(
    start_gateway: StartGateway,
    ollama: tuple[FakeOllama, FakeServer],
    files: dict[str, Path],
    tmp_path: Path,
) -> None:
    fake, server = ollama
    served = _gateway(start_gateway, server, tmp_path)
    _deployed(served, files)
    served.gateway.stop()
    # Ollama lost its models meanwhile (a new volume): the gateway makes them again.
    fake.models.clear()
    fake.creates.clear()

    again = _gateway(start_gateway, server, tmp_path)

    created = [body["model"] for body in fake.creates]
    # The base first: its adapters are created from it.
    assert created == [ollama_model_name(n) for n in (BASE, FT_A, FT_B)]
    assert fake.blob_uploads == 3  # the blobs were still there: nothing sent again
    assert again.admin("GET", f"/v1/deployments/{BASE}").json()["adapters"] == [FT_A, FT_B]
    assert _ask(again, FT_A) == f"[{ollama_model_name(FT_A)}] Forgeline serves this"
    assert _ask(again, FT_B).startswith(f"[{ollama_model_name(FT_B)}]")
    models = {m.id: m.model_dump() for m in again.client().models.list().data}
    assert models[FT_B]["metadata"]["base"] == BASE


def test_what_an_adapter_deployment_cannot_be_is_refused_with_the_reason(
    start_gateway: StartGateway,
    ollama: tuple[FakeOllama, FakeServer],
    files: dict[str, Path],
    tmp_path: Path,
) -> None:
    fake, server = ollama
    served = _gateway(start_gateway, server, tmp_path)

    def refused(spec: dict[str, Any]) -> dict[str, Any]:
        response = served.admin("POST", "/v1/deployments", json=spec)
        assert response.status_code in (400, 422), response.text
        error: dict[str, Any] = response.json()["error"]
        return error

    no_base = refused(_adapter(FT_A, files["a"]))
    assert no_base["param"] == "base"
    assert f"the base deployment '{BASE}' does not exist" in no_base["message"]
    served.deploy(_base(files))
    # What the base decides is the base's.
    owned = refused(_adapter(FT_A, files["a"], url=server.url, max_in_flight=3))
    assert "takes 'url', 'max_in_flight' from its base deployment" in owned["message"]
    both = refused(_adapter(FT_A, files["a"], gguf=str(files["base"])))
    assert "leave out 'gguf' and 'registry_gguf'" in both["message"]
    without_base = refused({**_adapter(FT_A, files["a"]), "base": None, "gguf": str(files["a"])})
    assert "give 'base'" in without_base["message"]
    missing = refused(_adapter(FT_A, files["a"].with_name("missing.gguf")))
    assert missing["param"] == "lora[0]"
    assert "missing.gguf" in missing["message"]
    served.deploy(_adapter(FT_A, files["a"]))
    on_adapter = refused({**_adapter(FT_B, files["b"]), "base": FT_A})
    assert "not an adapter deployment itself" in on_adapter["message"]

    # The base's model gone from Ollama: Ollama's own error, and what to do about it.
    del fake.models[ollama_model_name(BASE)]
    gone = refused(_adapter(FT_B, files["b"]))
    assert "pull model manifest: file does not exist" in gone["message"]
    assert "deploy the base deployment again" in gone["message"]
    assert ollama_model_name(FT_B) not in fake.models


def test_adapters_sharing_a_file_name_are_told_apart_by_their_position(
    start_gateway: StartGateway,
    ollama: tuple[FakeOllama, FakeServer],
    files: dict[str, Path],
    tmp_path: Path,
) -> None:
    fake, server = ollama
    served = _gateway(start_gateway, server, tmp_path)
    served.deploy(_base(files))

    served.deploy({**_adapter(FT_A, files["a"]), "lora": [str(files["a"]), str(files["b"])]})

    assert fake.creates[-1]["adapters"] == {
        "0-adapter.gguf": _digest(files["a"]),
        "1-adapter.gguf": _digest(files["b"]),
    }
    assert _ask(served, FT_A).startswith(f"[{ollama_model_name(FT_A)}]")
