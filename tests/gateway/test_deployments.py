"""The deployments admin API with llama.cpp: GGUF files placed on llama-server processes the
gateway manages (or on servers already running), kept across gateway restarts."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from forgeline_gateway.backends.llamacpp import LlamaCppBackend

from .conftest import Served, StartGateway

CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


def _spec(gguf: Path, name: str = "tiny", **extra: object) -> dict[str, object]:
    return {"name": name, "backend": "llamacpp", "gguf": str(gguf), "parallel": 2, **extra}


def _backend(served: Served) -> LlamaCppBackend:
    backend = served.gateway.app.state.manager.backends["llamacpp"]
    assert isinstance(backend, LlamaCppBackend)
    return backend


def test_create_list_show_and_delete(start_gateway: StartGateway, tiny_gguf: Path) -> None:
    served = start_gateway()
    created = served.deploy(_spec(tiny_gguf, replicas=2, metadata={"version": "7"}))
    processes = _backend(served).processes("tiny")

    assert created["status"] == "ready"
    assert created["instances"] == 2
    assert created["spec"]["metadata"]["version"] == "7"
    assert len(processes) == 2
    assert all(p.running for p in processes)
    assert [d["name"] for d in served.admin("GET", "/v1/deployments").json()["data"]] == ["tiny"]
    assert served.admin("GET", "/v1/deployments/tiny").json()["instances"] == 2

    assert served.admin("DELETE", "/v1/deployments/tiny").status_code == 204
    assert not any(p.running for p in processes)  # its llama-server processes are stopped
    assert served.admin("GET", "/v1/deployments").json()["data"] == []
    assert served.admin("GET", "/v1/deployments/tiny").status_code == 404
    assert served.admin("DELETE", "/v1/deployments/tiny").status_code == 404
    assert served.client().models.list().data == []


def test_a_second_deployment_of_the_same_name_is_409(
    start_gateway: StartGateway, tiny_gguf: Path
) -> None:
    served = start_gateway()
    served.deploy(_spec(tiny_gguf))

    again = served.admin("POST", "/v1/deployments", json=_spec(tiny_gguf))

    assert again.status_code == 409
    assert again.json()["error"]["param"] == "name"


@pytest.mark.parametrize(
    ("spec", "param"),
    [
        ({"name": "x", "backend": "llamacpp"}, None),
        ({"name": "x", "backend": "llamacpp", "gguf": "/a.gguf", "urls": ["http://h:1"]}, None),
        ({"name": "x", "backend": "llamacpp", "gguf": "/a.gguf", "replicas": 0}, "replicas"),
        ({"name": "bad name", "backend": "llamacpp", "gguf": "/a.gguf"}, "name"),
        ({"name": "x", "backend": "tgi", "gguf": "/a.gguf"}, "backend"),
        ({"name": "x", "backend": "llamacpp", "gguf": "/nonexistent/tiny.gguf"}, None),
    ],
)
def test_an_invalid_spec_is_400(
    start_gateway: StartGateway, spec: dict[str, object], param: str | None
) -> None:
    served = start_gateway()

    response = served.admin("POST", "/v1/deployments", json=spec)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    assert served.admin("GET", "/v1/deployments").json()["data"] == []


def test_deployments_survive_a_gateway_restart(
    start_gateway: StartGateway, tiny_gguf: Path, tmp_path: Path
) -> None:
    database = tmp_path / "shared.sqlite3"
    first = start_gateway(database=database)
    first.deploy(_spec(tiny_gguf, metadata={"base": "tiny", "version": "1"}))
    old = _backend(first).processes("tiny")
    first.gateway.stop()
    assert not any(p.running for p in old)  # a stopping gateway stops what it started

    second = start_gateway(database=database)
    answer = second.client().chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)

    assert answer.model == "tiny"
    [model] = second.client().models.list().data
    assert model.model_dump()["metadata"]["version"] == "1"
    assert all(p.running for p in _backend(second).processes("tiny"))


def test_a_deployment_that_cannot_be_restored_is_listed_as_failed(
    start_gateway: StartGateway, tiny_gguf: Path, tmp_path: Path
) -> None:
    database = tmp_path / "shared.sqlite3"
    gguf = tmp_path / "soon-gone.gguf"
    shutil.copyfile(tiny_gguf, gguf)
    first = start_gateway(database=database)
    first.deploy(_spec(gguf))
    first.gateway.stop()
    gguf.unlink()

    second = start_gateway(database=database)
    [listed] = second.admin("GET", "/v1/deployments").json()["data"]
    with pytest.raises(openai.InternalServerError) as caught:
        second.client().chat.completions.create(model="tiny", messages=CHAT)

    assert listed["status"] == "failed"
    assert "soon-gone.gguf" in listed["error"]  # admins see why
    assert caught.value.status_code == 503
    assert "soon-gone" not in caught.value.response.text  # inference clients do not
    assert second.admin("DELETE", "/v1/deployments/tiny").status_code == 204
    assert second.admin("GET", "/v1/deployments").json()["data"] == []


def test_attaching_to_a_running_llama_server(
    start_gateway: StartGateway, tiny_gguf: Path, start_llama_server: Callable[..., Any]
) -> None:
    server = start_llama_server(tiny_gguf, ["--alias", "upstream-name"])
    served = start_gateway()
    served.deploy({"name": "attached", "backend": "llamacpp", "urls": [server.base_url]})

    answer = served.client().chat.completions.create(model="attached", messages=CHAT, max_tokens=2)
    chunks = list(
        served.client().chat.completions.create(
            model="attached", messages=CHAT, max_tokens=2, stream=True
        )
    )

    # The server calls the model "upstream-name"; clients see the deployment's name.
    assert answer.model == "attached"
    assert {c.model for c in chunks} == {"attached"}
    assert _backend(served).processes("attached") == []


def test_lora_adapters_are_passed_to_llama_server(
    start_gateway: StartGateway, tiny_gguf: Path, tmp_path: Path
) -> None:
    served = start_gateway()
    response = served.admin(
        "POST", "/v1/deployments", json=_spec(tiny_gguf, lora=[str(tmp_path / "none.gguf")])
    )

    # The adapter file is checked before any process starts.
    assert response.status_code == 400
    assert "none.gguf" in response.json()["error"]["message"]
    assert _backend(served).processes("tiny") == []


def test_admin_endpoints_take_names_with_colons_and_slashes(
    start_gateway: StartGateway, tiny_gguf: Path
) -> None:
    served = start_gateway()
    name = "ft:org/tiny:acme:demo:abc"
    served.deploy(_spec(tiny_gguf, name=name))

    assert served.admin("GET", f"/v1/deployments/{name}").json()["name"] == name
    assert served.client().models.retrieve(name).id == name
    assert httpx.get(f"{served.url}/v1/models/{name}", trust_env=False).status_code == 401
    assert served.admin("DELETE", f"/v1/deployments/{name}").status_code == 204


@pytest.mark.parametrize(
    ("spec", "param", "allowed_by"),
    [
        # Ollama is handed the file and the server: together, a way to copy any host file out.
        (
            {"name": "x", "backend": "ollama", "gguf": "/etc/passwd", "url": "http://127.0.0.1:1"},
            "gguf",
            "FORGELINE_GATEWAY_MODEL_DIRS",
        ),
        (
            {"name": "x", "backend": "llamacpp", "gguf": "{cache}/../../etc/passwd"},
            "gguf",
            "FORGELINE_GATEWAY_MODEL_DIRS",
        ),
        (
            {"name": "x", "backend": "vllm", "base_model": "m", "urls": ["http://10.1.2.3:8000"]},
            "urls[0]",
            "FORGELINE_GATEWAY_BACKEND_HOSTS",
        ),
        (
            {"name": "x", "backend": "ollama", "registry_gguf": "a:1", "url": "http://metadata:80"},
            "url",
            "FORGELINE_GATEWAY_BACKEND_HOSTS",
        ),
    ],
)
def test_a_deployment_names_only_files_and_servers_the_operator_allows(
    start_gateway: StartGateway,
    tmp_path: Path,
    spec: dict[str, object],
    param: str,
    allowed_by: str,
) -> None:
    cache = tmp_path / "cache"
    served = start_gateway({"model_cache": cache, "model_dirs": []})
    if isinstance(spec.get("gguf"), str):
        spec["gguf"] = str(spec["gguf"]).format(cache=cache)

    response = served.admin("POST", "/v1/deployments", json=spec)

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert allowed_by in error["message"]
    assert served.admin("GET", "/v1/deployments").json()["data"] == []


def test_a_symlink_in_the_model_cache_cannot_lead_out_of_it(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "model.gguf").symlink_to("/etc/passwd")
    served = start_gateway({"model_cache": cache, "model_dirs": []})

    response = served.admin(
        "POST", "/v1/deployments", json=_spec(cache / "model.gguf", name="linked")
    )

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "gguf"


def test_a_configured_backend_host_is_allowed(start_gateway: StartGateway) -> None:
    served = start_gateway({"backend_hosts": ["vllm.internal"]})

    response = served.admin(
        "POST",
        "/v1/deployments",
        json={
            "name": "x",
            "backend": "vllm",
            "base_model": "m",
            "urls": ["http://vllm.internal:1"],
        },
    )

    # Past the boundary: the server itself does not answer, which is another error.
    assert response.json()["error"].get("param") != "urls[0]"
