"""Adapter deployments on a vLLM base deployment (issue 21, the vLLM path): HF/PEFT adapter
versions of the registry loaded at runtime into the vLLM container of a `registry_model`
deployment started with `enable_lora`, against the Docker Engine contract fake whose containers
run the vLLM contract fake (`fakes/vllm.py`, which follows vLLM's "LoRA Adapters" docs).

No restart is involved: attaching loads the adapter on the base's instances, detaching unloads
it, and requests for the base and the other adapters go on throughout."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fakes.docker_engine import FakeContainer, FakeDockerEngine
from fakes.server import FakeServer
from fakes.vllm import FakeVllm

from forgeline_cli.stack import LocalStack
from forgeline_kit.tinymodel import TinyModel
from forgeline_proto.registry.v1 import registry_pb2 as rpb
from forgeline_registry_client.client import RegistryClient

from .conftest import Served, StartGateway

IMAGE = "vllm/vllm-openai:v0.11.0"
BASE = "tiny-vllm"
FT_A = "ft:tiny-llama:acme:a"
FT_B = "ft:tiny-llama:acme:b"
FT_C = "ft:tiny-llama:acme:c"


def _peft_adapter(directory: Path, rank: int) -> Path:
    """A LoRA adapter directory in PEFT's layout (what vLLM loads; the weights are not read by
    the fake)."""
    directory.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": ["q"]}
    (directory / "adapter_config.json").write_text(json.dumps(config))
    (directory / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    return directory


@pytest.fixture(scope="module")
def registered(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModel
) -> Iterator[dict[str, str]]:
    """A registry process holding the tiny model and PEFT adapters of it: its address under
    ``registry``, the versions' references under ``base``, ``a``, ``b``, ``c`` (rank 8) and
    ``wide`` (rank 32)."""
    work = tmp_path_factory.mktemp("peft")
    stack = LocalStack(tmp_path_factory.mktemp("registry"))
    stack.start("registry")
    try:

        async def push() -> dict[str, str]:
            references: dict[str, str] = {}
            async with RegistryClient(stack.registry_target, accept_local_files=True) as client:
                version = await client.push(
                    tiny_model.path, "acme/tiny-llama", kind=rpb.VERSION_KIND_BASE
                )
                references["base"] = f"{version.model}:{version.number}"
                for key, rank in (("a", 8), ("b", 8), ("c", 8), ("wide", 32)):
                    directory = _peft_adapter(work / key, rank)
                    version = await client.push(
                        directory, f"acme/tiny-lora-{key}", kind=rpb.VERSION_KIND_ADAPTER
                    )
                    references[key] = f"{version.model}:{version.number}"
            return references

        yield {"registry": stack.registry_target, **asyncio.run(push())}
    finally:
        stack.stop("registry")


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDockerEngine]:
    """The Docker Engine fake with the vLLM image, as the gateway's DOCKER_HOST."""
    fake = FakeDockerEngine(images={IMAGE})
    server = FakeServer(fake.app).start()
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{server.port}")
    for variable in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"):
        monkeypatch.delenv(variable, raising=False)
    yield fake
    fake.close()
    server.stop()


def _gateway(
    start: StartGateway, registered: dict[str, str], tmp_path: Path, **extra: Any
) -> Served:
    settings = {
        "registry_target": registered["registry"],
        "registry_local_files": True,
        "model_cache": tmp_path / "models",
        "vllm_image": IMAGE,
        "vllm_start_seconds": 30,
        **extra,
    }
    return start(settings, database=tmp_path / "gateway.sqlite3")


def _base(registered: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "name": BASE,
        "backend": "vllm",
        "registry_model": registered["base"],
        "enable_lora": True,
        "max_loras": 2,
        **extra,
    }


def _adapter(name: str, reference: str) -> dict[str, Any]:
    return {"name": name, "backend": "vllm", "base": BASE, "registry_adapter": reference}


def _vllm(engine: FakeDockerEngine) -> tuple[FakeContainer, FakeVllm]:
    [container] = engine.containers.values()
    assert container.vllm is not None
    return container, container.vllm


def _ask(served: Served, model: str) -> str:
    answer = served.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    assert answer.model == model
    return answer.choices[0].message.content or ""


def test_adapters_are_loaded_on_the_base_and_selected_by_their_name(
    start_gateway: StartGateway,
    registered: dict[str, str],
    engine: FakeDockerEngine,
    tmp_path: Path,
) -> None:
    served = _gateway(start_gateway, registered, tmp_path)
    served.deploy(_base(registered, max_adapters=2))
    container, vllm = _vllm(engine)
    # vLLM was started ready for runtime adapters, as its LoRA guide asks.
    command = container.body["Cmd"]
    assert "--enable-lora" in command
    assert container.argument("--max-loras") == "2"
    assert container.argument("--max-lora-rank") == "16"
    assert container.argument("--max-cpu-loras") is None  # vLLM's default: max_loras
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in container.body["Env"]

    created = served.deploy(_adapter(FT_A, registered["a"]))
    served.deploy(_adapter(FT_B, registered["b"]))

    assert created["status"] == "ready"
    assert created["spec"]["base"] == BASE
    # Both on the base's one server, by the paths its container sees (the cache's mount).
    assert set(vllm.loras) == {FT_A, FT_B}
    assert all(path.startswith("/models/acme+tiny-lora-") for path in vllm.loras.values())
    assert len(engine.creates) == 1  # loaded into the running server: no restart
    assert served.sample("forgeline_gateway_base_adapters", base=BASE, backend="vllm") == 2
    assert served.sample("forgeline_gateway_adapter_attach_seconds_count", backend="vllm") == 2
    for model in (FT_A, FT_B, BASE):
        assert _ask(served, model)
    assert [r["model"] for r in vllm.requests] == [FT_A, FT_B, BASE]  # the lora_name selects

    models = {m.id: m.model_dump() for m in served.client().models.list().data}
    assert set(models) == {BASE, FT_A, FT_B}
    assert models[FT_A]["base_deployment"] == BASE
    assert models[FT_A]["metadata"]["base"] == BASE
    assert models[BASE]["base_deployment"] is None
    assert served.admin("GET", f"/v1/deployments/{BASE}").json()["adapters"] == [FT_A, FT_B]
    refused = served.admin("DELETE", f"/v1/deployments/{BASE}")
    assert refused.status_code == 400
    assert FT_A in refused.json()["error"]["message"]

    # A third is past the base's max_adapters: refused, nothing loaded.
    response = served.admin("POST", "/v1/deployments", json=_adapter(FT_C, registered["c"]))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "base"
    assert "max_adapters" in error["message"]
    assert set(vllm.loras) == {FT_A, FT_B}

    assert served.admin("DELETE", f"/v1/deployments/{FT_A}").status_code == 204
    assert set(vllm.loras) == {FT_B}
    assert vllm.lora_calls[-1] == ("unload", {"lora_name": FT_A})
    assert served.admin("GET", f"/v1/deployments/{FT_A}").status_code == 404
    assert _ask(served, FT_B)
    served.deploy(_adapter(FT_C, registered["c"]))  # room again
    assert set(vllm.loras) == {FT_B, FT_C}


def test_an_adapter_above_the_base_rank_or_on_a_base_without_lora_is_refused(
    start_gateway: StartGateway,
    registered: dict[str, str],
    engine: FakeDockerEngine,
    tmp_path: Path,
) -> None:
    served = _gateway(start_gateway, registered, tmp_path)
    served.deploy(_base(registered))
    _, vllm = _vllm(engine)

    response = served.admin("POST", "/v1/deployments", json=_adapter(FT_A, registered["wide"]))

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "registry_adapter"
    assert "rank 32" in error["message"]
    assert "max_lora_rank (16)" in error["message"]
    assert vllm.lora_calls == []
    assert [d["name"] for d in served.admin("GET", "/v1/deployments").json()["data"]] == [BASE]

    # A base deployed without enable_lora carries no adapters.
    served.deploy({"name": "plain", "backend": "vllm", "registry_model": registered["base"]})
    spec = _adapter(FT_A, registered["a"]) | {"base": "plain"}
    response = served.admin("POST", "/v1/deployments", json=spec)
    assert response.status_code == 400, response.text
    assert "enable_lora" in response.json()["error"]["message"]


def test_unloading_one_adapter_leaves_a_stream_of_another_whole(
    start_gateway: StartGateway,
    registered: dict[str, str],
    engine: FakeDockerEngine,
    tmp_path: Path,
) -> None:
    served = _gateway(start_gateway, registered, tmp_path)
    served.deploy(_base(registered))
    served.deploy(_adapter(FT_A, registered["a"]))
    served.deploy(_adapter(FT_B, registered["b"]))
    _, vllm = _vllm(engine)
    vllm.chunk_delay = 0.05
    stream = _Stream(served, FT_B)

    assert stream.opened.wait(10)
    assert served.admin("DELETE", f"/v1/deployments/{FT_A}").status_code == 204
    assert set(vllm.loras) == {FT_B}
    stream.reader.join(30)

    assert len(stream.text().split()) >= 30  # every word arrived
    assert vllm.cancelled == 0


class _Stream:
    """A streamed chat completion of 40 tokens for `model`, read on a thread of its own."""

    def __init__(self, served: Served, model: str) -> None:
        self.lines: list[str] = []
        self.opened = threading.Event()
        self._served = served
        self._model = model
        self.reader = threading.Thread(target=self._read)
        self.reader.start()

    def _read(self) -> None:
        body = {
            "model": self._model,
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 40,
            "stream": True,
        }
        headers = {"Authorization": f"Bearer {self._served.inference_key}"}
        with httpx.stream(
            "POST",
            f"{self._served.url}/v1/chat/completions",
            json=body,
            headers=headers,
            timeout=30,
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                self.lines.append(line)
                self.opened.set()

    def text(self) -> str:
        """What the stream said, once it ended with ``[DONE]`` after its last chunk (which
        finished for ``length``)."""
        events = [line.removeprefix("data: ") for line in self.lines if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        last = chunks[-1]["choices"]
        assert last == [] or last[0]["finish_reason"] == "length"
        return "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        )


def _asked_until_not_found(served: Served, model: str, attempts: int = 200) -> bool:
    """Ask `model` until the gateway answers 404 (True), at most `attempts` times."""
    for _ in range(attempts):
        try:
            _ask(served, model)
        except openai.NotFoundError:
            return True
    return False


def test_deleting_an_adapter_lets_its_own_stream_finish_before_unloading_it(
    start_gateway: StartGateway,
    registered: dict[str, str],
    engine: FakeDockerEngine,
    tmp_path: Path,
) -> None:
    served = _gateway(start_gateway, registered, tmp_path)
    served.deploy(_base(registered))
    served.deploy(_adapter(FT_A, registered["a"]))
    _, vllm = _vllm(engine)
    vllm.chunk_delay = 0.05
    deleted: list[int] = []
    stream = _Stream(served, FT_A)

    assert stream.opened.wait(10)
    deleting = threading.Thread(
        target=lambda: deleted.append(served.admin("DELETE", f"/v1/deployments/{FT_A}").status_code)
    )
    deleting.start()
    # Its route goes at once: a new request for it is a 404 while its stream goes on.
    assert _asked_until_not_found(served, FT_A)
    assert FT_A in vllm.loras, "unloaded under its own stream"
    stream.reader.join(30)
    deleting.join(30)

    assert deleted == [204]
    assert FT_A not in vllm.loras
    assert len(stream.text().split()) >= 30  # every word arrived
    assert vllm.cancelled == 0


def test_a_restarted_gateway_loads_the_adapters_again(
    start_gateway: StartGateway,
    registered: dict[str, str],
    engine: FakeDockerEngine,
    tmp_path: Path,
) -> None:
    served = _gateway(start_gateway, registered, tmp_path)
    served.deploy(_base(registered))
    served.deploy(_adapter(FT_A, registered["a"]))
    served.deploy(_adapter(FT_B, registered["b"]))
    container, vllm = _vllm(engine)
    loaded = dict(vllm.loras)
    served.gateway.stop()

    # The container kept running: re-attached, and its adapters found loaded as they were.
    again = _gateway(start_gateway, registered, tmp_path)
    assert _vllm(engine)[0] is container
    assert vllm.loras == loaded
    assert [c for c, _ in vllm.lora_calls].count("unload") == 0
    assert _ask(again, FT_A)
    assert again.admin("GET", f"/v1/deployments/{BASE}").json()["adapters"] == [FT_A, FT_B]
    again.gateway.stop()

    # A new image: the container is replaced, and the new server gets the adapters loaded.
    newer = "vllm/vllm-openai:v0.11.1"
    engine.images.add(newer)
    third = _gateway(start_gateway, registered, tmp_path, vllm_image=newer)
    current, fresh = _vllm(engine)
    assert current is not container
    assert fresh.loras == loaded
    states = {d["name"]: d["status"] for d in third.admin("GET", "/v1/deployments").json()["data"]}
    assert states == {BASE: "ready", FT_A: "ready", FT_B: "ready"}
    assert _ask(third, FT_B)
    assert fresh.requests[-1]["model"] == FT_B


# --- more adapters than max_loaded_adapters: least recently used unloaded, loaded on demand -----


def _hold_stream(served: Served, model: str, opened: threading.Event) -> list[str]:
    """Stream a long answer for `model`, setting `opened` at its first line; the lines."""
    lines: list[str] = []
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 40,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {served.inference_key}"}
    with httpx.stream(
        "POST", f"{served.url}/v1/chat/completions", json=body, headers=headers, timeout=30
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            lines.append(line)
            opened.set()
    return lines


def _streamed_words(lines: list[str]) -> int:
    events = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    return len(text.split())


def _unloaded(vllm: FakeVllm) -> list[str]:
    return [body["lora_name"] for call, body in vllm.lora_calls if call == "unload"]


def test_past_max_loaded_adapters_the_least_recently_used_is_unloaded_and_loaded_on_demand(
    start_gateway: StartGateway,
    registered: dict[str, str],
    engine: FakeDockerEngine,
    tmp_path: Path,
) -> None:
    served = _gateway(start_gateway, registered, tmp_path)
    served.deploy(_base(registered))  # max_loras 2: two adapters loaded at once
    _, vllm = _vllm(engine)
    for name, key in ((FT_A, "a"), (FT_B, "b"), (FT_C, "c")):
        served.deploy(_adapter(name, registered[key]))

    # The third attached made room: the first, least recently used, was unloaded.
    assert set(vllm.loras) == {FT_B, FT_C}
    assert _unloaded(vllm) == [FT_A]
    base = served.admin("GET", f"/v1/deployments/{BASE}").json()
    assert base["adapters"] == [FT_A, FT_B, FT_C]
    assert base["loaded_adapters"] == [FT_B, FT_C]

    # Each request for an unloaded adapter loads it, unloading the least recently used.
    for model, evicted in ((FT_A, FT_B), (FT_B, FT_C), (FT_C, FT_A), (FT_C, None)):
        assert _ask(served, model)
        assert vllm.requests[-1]["model"] == model
        assert len(vllm.loras) == 2
        if evicted is not None:
            assert _unloaded(vllm)[-1] == evicted
    assert _unloaded(vllm) == [FT_A, FT_B, FT_C, FT_A]
    assert vllm.most_loaded == 2
    assert set(vllm.loras) == {FT_B, FT_C}
    assert served.admin("GET", f"/v1/deployments/{BASE}").json()["loaded_adapters"] == [
        FT_B,
        FT_C,
    ]
    # A request for the base itself is never held up.
    assert _ask(served, BASE)

    def loads(reason: str, **labels: str) -> float:
        return served.sample(
            "forgeline_gateway_adapter_loads_total", base=BASE, reason=reason, **labels
        )

    assert loads("attach") == 3
    assert loads("on_demand") == 3
    assert loads("on_demand", model=FT_A) == 1
    assert served.sample("forgeline_gateway_adapter_unloads_total", base=BASE, reason="lru") == 4
    assert served.sample("forgeline_gateway_adapter_load_seconds_count", model=FT_A) == 2
    assert served.sample("forgeline_gateway_base_adapters", base=BASE, backend="vllm") == 3
    assert served.sample("forgeline_gateway_base_adapters_loaded", base=BASE, backend="vllm") == 2
    assert (
        served.sample("forgeline_gateway_requests_total", model=FT_C, endpoint="chat", status="200")
        == 2
    )
    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed: apt-get install -y prometheus"
    linted = subprocess.run(  # noqa: S603 - a fixed argument list
        [promtool, "check", "metrics"],
        input=served.metrics(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert linted.stdout.strip() == linted.stderr.strip() == ""

    # Deleting an unloaded adapter unloads nothing more; a loaded one is unloaded.
    assert served.admin("DELETE", f"/v1/deployments/{FT_A}").status_code == 204
    assert _unloaded(vllm) == [FT_A, FT_B, FT_C, FT_A]
    assert served.admin("DELETE", f"/v1/deployments/{FT_B}").status_code == 204
    assert set(vllm.loras) == {FT_C}
    assert served.sample("forgeline_gateway_adapter_unloads_total", reason="detach") == 1
    assert served.sample("forgeline_gateway_base_adapters_loaded", base=BASE) == 1


def test_an_adapter_with_a_request_in_flight_is_never_the_one_unloaded(
    start_gateway: StartGateway,
    registered: dict[str, str],
    engine: FakeDockerEngine,
    tmp_path: Path,
) -> None:
    served = _gateway(start_gateway, registered, tmp_path)
    served.deploy(_base(registered))
    for name, key in ((FT_A, "a"), (FT_B, "b"), (FT_C, "c")):
        served.deploy(_adapter(name, registered[key]))
    _, vllm = _vllm(engine)
    assert set(vllm.loras) == {FT_B, FT_C}
    vllm.chunk_delay = 0.05
    opened = threading.Event()
    streamed: list[list[str]] = []
    reader = threading.Thread(target=lambda: streamed.append(_hold_stream(served, FT_B, opened)))
    reader.start()
    assert opened.wait(10)
    assert _ask(served, FT_C)  # FT_B is now the least recently used, but busy

    assert _ask(served, FT_A)

    assert set(vllm.loras) == {FT_B, FT_A}
    assert _unloaded(vllm)[-1] == FT_C
    reader.join(30)
    assert _streamed_words(streamed[0]) >= 30  # the stream was never cut
    assert vllm.most_loaded == 2


def test_concurrent_first_requests_for_an_unloaded_adapter_share_one_load(
    start_gateway: StartGateway,
    registered: dict[str, str],
    engine: FakeDockerEngine,
    tmp_path: Path,
) -> None:
    served = _gateway(start_gateway, registered, tmp_path)
    served.deploy(_base(registered))
    for name, key in ((FT_A, "a"), (FT_B, "b"), (FT_C, "c")):
        served.deploy(_adapter(name, registered[key]))
    _, vllm = _vllm(engine)
    assert FT_A not in vllm.loras
    vllm.load_delay = 0.5
    before = len(vllm.lora_calls)
    answers: list[str] = []
    threads = [
        threading.Thread(target=lambda: answers.append(_ask(served, FT_A))) for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert len(answers) == 6
    assert all(answers)
    assert [call for call, _ in vllm.lora_calls[before:]] == ["unload", "load"]
    assert served.sample("forgeline_gateway_adapter_loads_total", model=FT_A) == 2  # + attach


def test_when_every_loaded_adapter_is_busy_a_request_for_another_waits_then_gets_429(
    start_gateway: StartGateway,
    registered: dict[str, str],
    engine: FakeDockerEngine,
    tmp_path: Path,
) -> None:
    served = _gateway(
        start_gateway, registered, tmp_path, adapter_wait_seconds=0.3, retry_after_seconds=3
    )
    served.deploy(_base(registered))
    for name, key in ((FT_A, "a"), (FT_B, "b"), (FT_C, "c")):
        served.deploy(_adapter(name, registered[key]))
    _, vllm = _vllm(engine)
    vllm.chunk_delay = 0.05
    readers = []
    for model in (FT_B, FT_C):
        opened = threading.Event()
        reader = threading.Thread(target=_hold_stream, args=(served, model, opened))
        reader.start()
        readers.append(reader)
        assert opened.wait(10)

    with pytest.raises(openai.RateLimitError) as refused:
        _ask(served, FT_A)

    assert refused.value.response.headers["retry-after"] == "3"
    assert refused.value.body is not None
    assert set(vllm.loras) == {FT_B, FT_C}
    for reader in readers:
        reader.join(30)
    assert _ask(served, FT_A)  # room once they are done
    assert (
        served.sample("forgeline_gateway_requests_total", model=FT_A, endpoint="chat", status="429")
        == 1
    )


def test_a_restarted_gateway_keeps_at_most_max_loaded_adapters_loaded(
    start_gateway: StartGateway,
    registered: dict[str, str],
    engine: FakeDockerEngine,
    tmp_path: Path,
) -> None:
    served = _gateway(start_gateway, registered, tmp_path)
    served.deploy(_base(registered))
    for name, key in ((FT_A, "a"), (FT_B, "b"), (FT_C, "c")):
        served.deploy(_adapter(name, registered[key]))
    container, vllm = _vllm(engine)
    assert set(vllm.loras) == {FT_B, FT_C}
    calls = len(vllm.lora_calls)
    served.gateway.stop()

    # The container kept running: what it holds is taken as loaded, nothing reloaded.
    again = _gateway(start_gateway, registered, tmp_path)
    assert _vllm(engine)[0] is container
    assert len(vllm.lora_calls) == calls
    assert again.admin("GET", f"/v1/deployments/{BASE}").json()["loaded_adapters"] == [
        FT_B,
        FT_C,
    ]
    assert _ask(again, FT_A)
    assert set(vllm.loras) == {FT_A, FT_C}
    again.gateway.stop()

    # A new container: the oldest adapters up to the limit are loaded; the third on demand.
    newer = "vllm/vllm-openai:v0.11.1"
    engine.images.add(newer)
    third = _gateway(start_gateway, registered, tmp_path, vllm_image=newer)
    current, fresh = _vllm(engine)
    assert current is not container
    assert set(fresh.loras) == {FT_A, FT_B}
    for model in (FT_C, FT_A, FT_B):
        assert _ask(third, model)
    assert fresh.most_loaded == 2
    assert third.sample("forgeline_gateway_adapter_loads_total", reason="restore") == 2
    states = {d["name"]: d["status"] for d in third.admin("GET", "/v1/deployments").json()["data"]}
    assert states == {BASE: "ready", FT_A: "ready", FT_B: "ready", FT_C: "ready"}


def test_max_loaded_adapters_sizes_vllm_cpu_cache_and_is_at_least_max_loras(
    start_gateway: StartGateway,
    registered: dict[str, str],
    engine: FakeDockerEngine,
    tmp_path: Path,
) -> None:
    served = _gateway(start_gateway, registered, tmp_path)
    refused = served.admin("POST", "/v1/deployments", json=_base(registered, max_loaded_adapters=1))
    assert refused.status_code == 400, refused.text
    assert "at least 'max_loras'" in refused.json()["error"]["message"]

    served.deploy(_base(registered, max_loaded_adapters=3))
    container, vllm = _vllm(engine)
    assert container.argument("--max-loras") == "2"
    assert container.argument("--max-cpu-loras") == "3"
    for name, key in ((FT_A, "a"), (FT_B, "b"), (FT_C, "c")):
        served.deploy(_adapter(name, registered[key]))
    assert set(vllm.loras) == {FT_A, FT_B, FT_C}
    assert _unloaded(vllm) == []
