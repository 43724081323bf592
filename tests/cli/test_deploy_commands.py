"""``forgeline deploy``, ``undeploy`` and ``deployments`` against a real gateway over HTTP.

The registry runs as a process holding the tiny model (an HF base version) and its F16 GGUF
(converted from it); the gateway runs in a thread with the registry as its source, llama.cpp as
the real backend (llama-server processes) and the Ollama contract fake.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from fakes.docker_engine import FakeDockerEngine
from fakes.ollama import FakeOllama
from fakes.server import FakeServer
from gateway.harness import Gateway, make_key
from gguf_adapters import hf_to_gguf, make_gguf_adapter

from forgeline_cli.deploy_commands import _details, _listing
from forgeline_cli.gateway_admin import DeploymentView
from forgeline_cli.stack import LocalStack
from forgeline_gateway.security.keys import Scope
from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.tinymodel import TinyModel
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.registry.v1 import registry_pb2 as rpb
from forgeline_registry_client.client import RegistryClient

from .conftest import Result, forgeline

pytestmark = pytest.mark.slow  # llama.cpp converts the model and serves it

MODEL = "acme/tiny-llama"
VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"  # the gateway's default


@dataclass(frozen=True)
class Deployed:
    """The running registry and gateway, keys, and the registered versions."""

    registry: str
    gateway: Gateway
    admin_key: str
    inference_key: str
    base: str
    gguf: str
    ollama: FakeOllama

    def run(self, *argv: str, key: str | None = None) -> Result:
        """``forgeline ARGV --gateway URL --api-key KEY`` (the admin key by default)."""
        return forgeline(*argv, "--gateway", self.gateway.url, "--api-key", key or self.admin_key)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.gateway.url}/v1", api_key=self.inference_key, max_retries=0
        )


async def _register(target: str, model: TinyModel, gguf_dir: Path) -> tuple[str, str]:
    async with RegistryClient(target, accept_local_files=True) as client:
        base = await client.push(model.path, MODEL, kind=rpb.VERSION_KIND_BASE)
        parent = rpb.Parent(
            version=common_pb2.VersionRef(model=MODEL, version=base.number),
            relation=rpb.RELATION_CONVERTED_FROM,
        )
        gguf = await client.push(
            gguf_dir,
            MODEL,
            kind=rpb.VERSION_KIND_GGUF,
            lineage=rpb.Lineage(parents=[parent]),
            labels={"quantization": "f16", "file_type": "F16"},
        )
    return f"{MODEL}:{base.number}", f"{MODEL}:{gguf.number}"


@pytest.fixture(scope="module")
def deployed(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: TinyModel,
    llamacpp_toolchain: Toolchain,
) -> Iterator[Deployed]:
    work = tmp_path_factory.mktemp("deploy-cli")
    gguf_dir = work / "gguf"
    gguf_dir.mkdir()
    hf_to_gguf(llamacpp_toolchain, tiny_model.path, gguf_dir / "tiny-f16.gguf")
    stack = LocalStack(work / "stack")
    ollama = FakeOllama()
    ollama_server = FakeServer(ollama.app).start()
    gateway: Gateway | None = None
    try:
        stack.start("registry")
        base, gguf = asyncio.run(_register(stack.registry_target, tiny_model, gguf_dir))
        database = work / "gateway.sqlite3"
        admin_key = make_key(database, Scope.ADMIN, name="ops")
        inference_key = make_key(database, Scope.INFERENCE, name="app")
        gateway = Gateway(
            database,
            {
                "registry_target": stack.registry_target,
                "registry_local_files": True,
                "model_cache": work / "models",
                "ollama_url": ollama_server.url,
                "key_cache_seconds": 0,
            },
        ).start()
        yield Deployed(stack.registry_target, gateway, admin_key, inference_key, base, gguf, ollama)
    finally:
        if gateway is not None:
            gateway.stop()
        ollama_server.stop()
        stack.stop("registry")


def _one_line_error(result: Result) -> str:
    assert result.code == 1, result
    assert result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("forgeline: ")
    return lines[0]


def test_deploy_list_show_chat_and_undeploy_on_llamacpp(deployed: Deployed) -> None:
    result = deployed.run("deploy", deployed.gguf, "--backend", "llamacpp", "--name", "tiny")

    assert result.code == 0, result.err
    assert "deployed tiny on llamacpp (1 instance(s))" in result.out
    listed = deployed.run("deployments")
    assert listed.code == 0
    assert listed.out.startswith("tiny  llamacpp ready")
    assert deployed.gguf in listed.out
    shown = json.loads(deployed.run("deployments", "show", "tiny", "--json").out)
    assert shown["status"] == "ready"
    assert shown["spec"]["registry_gguf"] == deployed.gguf
    assert shown["spec"]["metadata"]["version"] == deployed.gguf
    # llama-server answers through the gateway; /v1/models shows where the model comes from.
    client = deployed.client()
    answer = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert answer.choices[0].message.content is not None
    assert [m.id for m in client.models.list().data] == ["tiny"]

    undeployed = deployed.run("undeploy", "tiny")

    assert undeployed.code == 0, undeployed.err
    assert undeployed.out == "undeployed tiny\n"
    assert deployed.run("deployments").out == "no deployments\n"
    assert json.loads(deployed.run("deployments", "list", "--json").out) == []


def test_quantization_picks_the_gguf_converted_from_the_version(deployed: Deployed) -> None:
    result = deployed.run(
        "deploy",
        MODEL,  # no version: the newest f16 GGUF of the model
        "--backend",
        "llamacpp",
        "--quantization",
        "F16",
        "--registry",
        deployed.registry,
        "--json",
    )
    try:
        assert result.code == 0, result.err
        view = json.loads(result.out)
        assert view["name"] == MODEL
        assert view["spec"]["registry_gguf"] == deployed.gguf
        assert view["spec"]["metadata"]["quantization"] == "f16"
    finally:
        deployed.run("undeploy", MODEL)

    # From the base version, through its lineage.
    result = deployed.run(
        "deploy",
        deployed.base,
        "--backend",
        "llamacpp",
        "--name",
        "from-base",
        "--quantization",
        "f16",
        "--registry",
        deployed.registry,
    )
    try:
        assert result.code == 0, result.err
        shown = json.loads(deployed.run("deployments", "show", "from-base", "--json").out)
        assert shown["spec"]["registry_gguf"] == deployed.gguf
    finally:
        deployed.run("undeploy", "from-base")


def test_a_gguf_adapter_is_deployed_on_a_base_deployment(
    deployed: Deployed, tiny_model: TinyModel, llamacpp_toolchain: Toolchain, tmp_path: Path
) -> None:
    made = make_gguf_adapter(tiny_model.path, tmp_path, llamacpp_toolchain, seed=5)

    async def push() -> None:
        async with RegistryClient(deployed.registry, accept_local_files=True) as client:
            await client.push(
                made.gguf.parent, "acme/tiny-adapter", kind=rpb.VERSION_KIND_GGUF_ADAPTER
            )

    asyncio.run(push())
    assert (
        deployed.run("deploy", deployed.gguf, "--backend", "llamacpp", "--name", "base").code == 0
    )
    try:
        result = deployed.run(
            "deploy",
            "acme/tiny-adapter",  # no version: the newest, which must be a GGUF adapter
            "--backend",
            "llamacpp",
            "--base",
            "base",
            "--name",
            "ft:tiny:cli",
            "--registry",
            deployed.registry,
        )

        assert result.code == 0, result.err
        assert "deployed ft:tiny:cli on llamacpp (1 instance(s))" in result.out
        assert "acme/tiny-adapter:1 on base" in result.out
        assert "  adapters    ft:tiny:cli" in deployed.run("deployments", "show", "base").out
        # The listing: the base, and the adapter beneath it (indented) naming its base.
        listed = deployed.run("deployments").out.splitlines()
        at = next(i for i, line in enumerate(listed) if line.startswith("base  "))
        assert "(+1 adapter(s))" in listed[at]
        assert listed[at + 1].startswith("  ft:tiny:cli  llamacpp ready")
        assert listed[at + 1].endswith("adapter acme/tiny-adapter:1 on base")
        shown = deployed.run("deployments", "show", "ft:tiny:cli").out
        assert "  served on   base (an adapter on its processes)" in shown
        client = deployed.client()
        answers = {
            name: client.chat.completions.create(
                model=name,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=8,
                temperature=0,
            )
            .choices[0]
            .message.content
            for name in ("base", "ft:tiny:cli")
        }
        assert answers["base"] != answers["ft:tiny:cli"]
        refused = _one_line_error(deployed.run("undeploy", "base"))
        assert "adapter deployments ft:tiny:cli: delete them first" in refused
        wrong = _one_line_error(
            deployed.run("deploy", "acme/tiny-adapter:1", "--backend", "vllm", "--base", "base")
        )
        assert "'base' cannot carry vLLM adapters" in wrong  # the gateway says why
    finally:
        deployed.run("undeploy", "ft:tiny:cli")
        deployed.run("undeploy", "base")


def test_ollama_deploys_a_registry_gguf(deployed: Deployed) -> None:
    result = deployed.run("deploy", deployed.gguf, "--backend", "ollama", "--name", "tiny-ollama")
    try:
        assert result.code == 0, result.err
        # The GGUF pulled from the registry was pushed to Ollama as a blob and created there.
        assert len(deployed.ollama.blobs) == 1
        assert len(deployed.ollama.models) == 1
        answer = deployed.client().chat.completions.create(
            model="tiny-ollama", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content
    finally:
        assert deployed.run("undeploy", "tiny-ollama").code == 0
    assert deployed.ollama.models == {}


def test_a_gguf_adapter_is_deployed_on_an_ollama_base_as_a_model_of_its_own(
    deployed: Deployed, tiny_model: TinyModel, llamacpp_toolchain: Toolchain, tmp_path: Path
) -> None:
    made = make_gguf_adapter(tiny_model.path, tmp_path, llamacpp_toolchain, seed=7)

    async def push() -> str:
        async with RegistryClient(deployed.registry, accept_local_files=True) as client:
            version = await client.push(
                made.gguf.parent, "acme/tiny-ollama-adapter", kind=rpb.VERSION_KIND_GGUF_ADAPTER
            )
        return f"{version.model}:{version.number}"

    adapter = asyncio.run(push())
    base = deployed.run("deploy", deployed.gguf, "--backend", "ollama", "--name", "ollama-base")
    assert base.code == 0, base.err
    try:
        result = deployed.run(
            "deploy", adapter, "--backend", "ollama", "--base", "ollama-base", "--name", "ft:o:cli"
        )

        assert result.code == 0, result.err
        assert f"{adapter} on ollama-base" in result.out
        # docs/api.md's create, as the Ollama fake received it: from the base's model, with the
        # adapter pulled from the registry and pushed as a blob.
        created = deployed.ollama.creates[-1]
        assert created["from"] == deployed.ollama.creates[-2]["model"]
        [digest] = created["adapters"].values()
        assert digest in deployed.ollama.blobs
        shown = deployed.run("deployments", "show", "ft:o:cli").out
        assert "  served on   ollama-base (a model made from it)" in shown
        answer = deployed.client().chat.completions.create(
            model="ft:o:cli", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert answer.choices[0].message.content == f"[{created['model']}] Forgeline serves this"
        refused = _one_line_error(deployed.run("undeploy", "ollama-base"))
        assert "adapter deployments ft:o:cli: delete them first" in refused
    finally:
        deployed.run("undeploy", "ft:o:cli")
        deployed.run("undeploy", "ollama-base")
    assert deployed.ollama.models == {}


@pytest.fixture(scope="module")
def engine() -> Iterator[FakeDockerEngine]:
    """The Docker Engine fake with the vLLM image, as DOCKER_HOST for the whole module: the
    gateway makes its Docker client once, at its first vLLM deployment."""
    fake = FakeDockerEngine(images={VLLM_IMAGE})
    server = FakeServer(fake.app).start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{server.port}")
        yield fake
    fake.close()
    server.stop()


def test_vllm_deploys_an_hf_version_on_a_container(
    deployed: Deployed, engine: FakeDockerEngine
) -> None:
    result = deployed.run(
        "deploy", deployed.base, "--backend", "vllm", "--tensor-parallel-size", "2", "--json"
    )
    assert result.code == 0, result.err
    view = json.loads(result.out)
    assert view["spec"]["registry_model"] == deployed.base
    assert view["spec"]["tensor_parallel_size"] == 2
    [container] = engine.containers.values()
    assert container.argument("--served-model-name") == MODEL
    answer = deployed.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content

    assert deployed.run("undeploy", MODEL).code == 0
    assert engine.containers == {}


def test_an_hf_adapter_is_loaded_into_a_vllm_base(
    deployed: Deployed, engine: FakeDockerEngine, tmp_path: Path
) -> None:
    adapter_dir = tmp_path / "peft"
    adapter_dir.mkdir()
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config))
    (adapter_dir / "adapter_model.safetensors").write_bytes(b"\0" * 64)

    async def push() -> str:
        async with RegistryClient(deployed.registry, accept_local_files=True) as client:
            version = await client.push(
                adapter_dir, "acme/tiny-lora", kind=rpb.VERSION_KIND_ADAPTER
            )
            return f"{version.model}:{version.number}"

    adapter = asyncio.run(push())
    base = deployed.run(
        "deploy", deployed.base, "--backend", "vllm", "--name", "lora-base", "--enable-lora"
    )
    assert base.code == 0, base.err
    [container] = engine.containers.values()
    assert "--enable-lora" in container.body["Cmd"]
    name = "ft:tiny:acme:x"
    result = deployed.run(
        "deploy",
        "acme/tiny-lora",  # the newest version, which the registry resolves
        *("--backend", "vllm", "--base", "lora-base", "--name", name),
        *("--registry", deployed.registry),
    )
    assert result.code == 0, result.err
    assert container.vllm is not None
    assert name in container.vllm.loras  # loaded into the running server, no restart
    view = json.loads(deployed.run("deployments", "show", name, "--json").out)
    assert view["spec"]["registry_adapter"] == adapter
    answer = deployed.client().chat.completions.create(
        model=name, messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.model == name
    shown = deployed.run("deployments", "show", "lora-base").out.splitlines()
    assert f"  adapters    {name}" in shown
    # A GGUF version is not what vLLM loads: one line naming the kind it needs.
    wrong = deployed.run(
        "deploy",
        MODEL,
        *("--backend", "vllm", "--base", "lora-base"),
        *("--registry", deployed.registry),
    )
    assert wrong.code == 1
    assert "not an HF/PEFT adapter" in _one_line_error(wrong)

    assert deployed.run("undeploy", name).code == 0
    assert name not in container.vllm.loras
    assert deployed.run("undeploy", "lora-base").code == 0


def test_an_unknown_version_is_one_line(deployed: Deployed) -> None:
    line = _one_line_error(deployed.run("deploy", f"{MODEL}:99", "--backend", "llamacpp"))

    assert f"{MODEL}:99 not found" in line
    assert f"forgeline models show {MODEL}" in line


def test_an_unknown_model_is_one_line(deployed: Deployed) -> None:
    line = _one_line_error(
        deployed.run(
            "deploy", "nobody/nothing", "--backend", "llamacpp", "--registry", deployed.registry
        )
    )

    assert "nobody/nothing" in line
    assert "forgeline models show" in line


def test_a_missing_quantization_names_the_conversion(deployed: Deployed) -> None:
    line = _one_line_error(
        deployed.run(
            "deploy",
            deployed.base,
            "--backend",
            "llamacpp",
            "--quantization",
            "q4_k_m",
            "--registry",
            deployed.registry,
        )
    )

    assert f"forgeline convert {deployed.base} --to q4_k_m" in line


def test_an_hf_version_on_llamacpp_is_one_line(deployed: Deployed) -> None:
    line = _one_line_error(deployed.run("deploy", deployed.base, "--backend", "llamacpp"))

    assert "GGUF" in line
    assert "--quantization" in line


def test_a_gguf_version_on_vllm_is_one_line(deployed: Deployed) -> None:
    line = _one_line_error(deployed.run("deploy", deployed.gguf, "--backend", "vllm"))

    assert "not an HF model" in line


def test_an_unreachable_gateway_is_one_line() -> None:
    line = _one_line_error(
        forgeline("deployments", "--gateway", "http://127.0.0.1:9", "--api-key", "x")
    )

    assert "cannot reach the gateway at http://127.0.0.1:9" in line
    assert "--gateway" in line


def test_a_missing_key_is_one_line(deployed: Deployed, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("FORGELINE_CLI_API_KEY", "FORGELINE_API_KEY"):
        monkeypatch.delenv(variable, raising=False)

    line = _one_line_error(forgeline("deployments", "--gateway", deployed.gateway.url))

    assert "needs an API key" in line
    assert "--api-key" in line


def test_a_wrong_key_is_one_line(deployed: Deployed) -> None:
    line = _one_line_error(deployed.run("deployments", key="fl-not-a-key"))

    assert "refused the API key" in line


def test_an_inference_key_lacks_the_admin_scope(deployed: Deployed) -> None:
    line = _one_line_error(deployed.run("undeploy", "tiny", key=deployed.inference_key))

    assert "admin scope" in line
    assert "forgeline-gateway keys create" in line


def test_the_key_and_gateway_come_from_the_environment(
    deployed: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORGELINE_CLI_GATEWAY", deployed.gateway.url)
    monkeypatch.delenv("FORGELINE_CLI_API_KEY", raising=False)
    monkeypatch.setenv("FORGELINE_API_KEY", deployed.admin_key)

    result = forgeline("deployments", "--json")

    assert result.code == 0, result.err
    assert json.loads(result.out) == []


def test_the_listing_puts_adapters_beneath_their_base() -> None:
    def view(name: str, adapters: tuple[str, ...] = (), **spec: object) -> DeploymentView:
        return DeploymentView(
            name=name,
            backend="llamacpp",
            status="ready",
            instances=1,
            adapters=list(adapters),
            created=0,
            spec={"name": name, "backend": "llamacpp", **spec},
        )

    views = [
        view("ft:base:a", base="base", registry_lora=["acme/a:1"]),
        view("base", ("ft:base:a", "ft:base:b"), registry_gguf="acme/tiny:2"),
        view("tiny", gguf="/models/tiny.gguf"),
        view("ft:base:b", base="base", lora=["/adapters/b.gguf"]),
        view("ft:gone:c", base="gone", registry_lora=["acme/c:1"]),
    ]

    lines = _listing(views)

    when = "1970-01-01 00:00:00"
    assert lines == [
        f"base  llamacpp ready  1 instance(s)  {when}  acme/tiny:2  (+2 adapter(s))",
        f"  ft:base:a  llamacpp ready  1 instance(s)  {when}  adapter acme/a:1 on base",
        f"  ft:base:b  llamacpp ready  1 instance(s)  {when}  adapter /adapters/b.gguf on base",
        f"tiny  llamacpp ready  1 instance(s)  {when}  /models/tiny.gguf",
        f"ft:gone:c  llamacpp ready  1 instance(s)  {when}  adapter acme/c:1 on gone",
    ]
    assert "  served on   base (an adapter on its processes)" in _details(views[0])


def test_a_vllm_base_shows_its_attached_and_its_loaded_adapters() -> None:
    view = DeploymentView(
        name="tiny-vllm",
        backend="vllm",
        status="ready",
        instances=1,
        adapters=["ft:a", "ft:b", "ft:c"],
        loaded_adapters=["ft:c", "ft:a"],
        spec={"name": "tiny-vllm", "backend": "vllm", "registry_model": "acme/tiny:1"},
    )

    details = _details(view).splitlines()

    assert "  adapters    ft:a, ft:b, ft:c" in details
    assert "  loaded      ft:c, ft:a" in details
