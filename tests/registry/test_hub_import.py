"""Base models by hub id: ``hf:ORG/NAME`` and ``modelscope:ORG/NAME`` imported with the hubs' real
clients (huggingface_hub, modelscope_hub) from local stand-ins of the hubs' HTTP APIs
(tests/fakes/hf_hub.py, tests/fakes/modelscope_hub.py), which the clients reach through their own
endpoint variables, ``HF_ENDPOINT`` and ``MODELSCOPE_ENDPOINT``.

Each stand-in serves the tiny model plus what a real repository holds beside it: a duplicate
PyTorch ``.bin``, a TensorFlow ``.h5``, an ``original/`` checkpoint, a README and
``.gitattributes``. The duplicates must never be requested."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.hf_hub import FakeHfHub
from fakes.hub_files import Repo, gets_of
from fakes.modelscope_hub import FakeModelScope
from fakes.server import FakeServer

from forgeline_cli.registry_commands import register_registry_commands
from forgeline_kit.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unavailable
from forgeline_kit.tinymodel import TinyModel
from forgeline_proto.registry.v1 import registry_pb2 as pb
from forgeline_registry_client.client import RegistryClient
from forgeline_registry_client.hub import (
    HubImporter,
    RemoteFile,
    default_model_name,
    import_model,
    parse_hub_id,
    select_files,
)

from .conftest import StartRegistry, StoreConfig
from .process import RegistryProcess

#: Files a repository holds that the import must leave on the hub.
DUPLICATES = ("pytorch_model.bin", "tf_model.h5", "original/consolidated.00.pth", ".gitattributes")


@pytest.fixture(scope="module")
def repo_dir(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as a hub repository holds it, with copies in other formats beside it."""
    root = tmp_path_factory.mktemp("hub-repo") / "repo"
    shutil.copytree(tiny_model.path, root)
    (root / "pytorch_model.bin").write_bytes(b"a pickled copy of the weights" * 100)
    (root / "tf_model.h5").write_bytes(b"HDF5 copy" * 100)
    (root / "original").mkdir()
    (root / "original" / "consolidated.00.pth").write_bytes(b"consolidated" * 100)
    (root / "README.md").write_text("# tiny\n")
    (root / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    return root


@pytest.fixture(scope="module")
def remote_code_dir(repo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository whose config names its own classes (``auto_map``), with their code."""
    root = tmp_path_factory.mktemp("remote-code") / "repo"
    shutil.copytree(repo_dir, root)
    config = json.loads((root / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM"}
    (root / "config.json").write_text(json.dumps(config))
    (root / "modeling_tiny.py").write_text("import os\nos.system('echo owned')\n")
    return root


@pytest.fixture(scope="module")
def hf_hub() -> Iterator[tuple[FakeHfHub, FakeServer]]:
    fake = FakeHfHub()
    server = FakeServer(fake.app).start()
    yield fake, server
    server.stop()


@pytest.fixture(scope="module")
def modelscope() -> Iterator[tuple[FakeModelScope, FakeServer]]:
    fake = FakeModelScope()
    server = FakeServer(fake.app).start()
    yield fake, server
    server.stop()


@pytest.fixture(autouse=True)
def hub_env(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    hf_hub: tuple[FakeHfHub, FakeServer],
    modelscope: tuple[FakeModelScope, FakeServer],
) -> Path:
    """The clients pointed at the stand-ins by their own variables; caches in the test's
    directory; no token of the developer's."""
    monkeypatch.setenv("HF_ENDPOINT", hf_hub[1].url)
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", modelscope[1].url)
    monkeypatch.setenv("MODELSCOPE_HOME", str(tmp_path / "modelscope-home"))
    monkeypatch.setenv("FORGELINE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_API_TOKEN", "MODELSCOPE_DOMAIN"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "cache" / "hub"


@pytest.fixture
async def registry(
    start_registry: StartRegistry, fs_store: StoreConfig
) -> AsyncIterator[RegistryClient]:
    running = await start_registry(fs_store)
    async with running.client() as client:
        yield client


def _repo_id() -> str:
    return f"acme/Tiny-{uuid.uuid4().hex[:8]}"


def _expected_files(repo: Repo) -> dict[str, str]:
    """What the import should take: the tiny model and the README."""
    return {
        path: file.sha256
        for path, file in repo.files.items()
        if path not in DUPLICATES and "/" not in path
    }


def _partial_sizes(cache: Path) -> list[int]:
    """Sizes of the partial downloads ModelScope keeps (``<file>.incomplete``)."""
    return [p.stat().st_size for p in cache.rglob("*.incomplete")]


def _assert_never_requested(requests: list[Any], repo: Repo) -> None:
    for path in DUPLICATES:
        assert not gets_of(requests, path), f"{path} was downloaded"
        assert not gets_of(requests, repo.files[path].sha256), f"{path} was downloaded"


# --- hub ids and the choice of files -----------------------------------------------------------


def test_hub_ids_parse_and_name_the_model() -> None:
    hub_id = parse_hub_id("hf:Qwen/Qwen2.5-0.5B-Instruct")
    assert (hub_id.hub, hub_id.repo_id, hub_id.revision) == (
        "huggingface",
        "Qwen/Qwen2.5-0.5B-Instruct",
        "main",
    )
    assert (
        str(parse_hub_id("modelscope:qwen/Qwen2.5-0.5B@v1.0"))
        == "modelscope:qwen/Qwen2.5-0.5B@v1.0"
    )
    assert parse_hub_id("modelscope:qwen/x").revision == "master"
    assert parse_hub_id("hf:org/name@refs/pr/1").revision == "refs/pr/1"
    assert default_model_name("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert default_model_name("_org/na+me") == "org/na-me"
    for bad in ("hf:gpt2", "hf:a/b/c", "s3:a/b", "hf:a/b@", "hf:a/b@../x", "hf:a/b c"):
        with pytest.raises(InvalidArgument):
            parse_hub_id(bad)


def _files(*paths: str) -> list[RemoteFile]:
    return [RemoteFile(p, 1, "") for p in paths]


def test_safetensors_shards_named_by_the_index_are_chosen_over_every_other_copy() -> None:
    files = _files(
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "consolidated.safetensors",
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model.bin.index.json",
        "training_args.bin",
        "flax_model.msgpack",
        "model.onnx",
        "model-q4.gguf",
        "original/consolidated.00.pth",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "params.json",
        "LICENSE",
        "modeling_x.py",
        "images/chart.png",
        ".gitattributes",
    )
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    selection = select_files(files, {"model.safetensors.index.json": index})
    assert selection.paths == (
        "LICENSE",
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "params.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
    )
    assert set(selection.skipped) == {f.path for f in files} - set(selection.paths)
    assert "trust_remote_code" in selection.skipped["modeling_x.py"]
    trusted = select_files(files, {"model.safetensors.index.json": index}, trust_remote_code=True)
    assert "modeling_x.py" in trusted.paths


def test_pytorch_weights_are_taken_only_without_safetensors_and_no_weights_is_refused() -> None:
    selection = select_files(_files("config.json", "pytorch_model.bin", "tf_model.h5"))
    assert selection.paths == ("config.json", "pytorch_model.bin")
    with pytest.raises(InvalidArgument, match="no safetensors or PyTorch weights"):
        select_files(_files("config.json", "model-Q4_K_M.gguf"))
    # What the gateway imports for a fine-tuning job: never a pickle.
    with pytest.raises(InvalidArgument, match="PyTorch pickles"):
        select_files(_files("config.json", "pytorch_model.bin"), safetensors_only=True)


# --- the provenance contract --------------------------------------------------------------------


async def test_the_registry_refuses_a_provenance_that_names_other_files_or_digests(
    registry: RegistryClient, tmp_path: Path
) -> None:
    (tmp_path / "config.json").write_text("{}")
    plan, _ = await registry.plan(tmp_path)
    digest = plan.artifacts[0].sha256

    def provenance(path: str, sha256: str) -> pb.Lineage:
        file = pb.ProvenanceFile(path=path, sha256=sha256, size_bytes=2)
        return pb.Lineage(
            provenance=pb.Provenance(hub="huggingface", repo_id="a/b", commit="c", files=[file])
        )

    for lineage, field in (
        (provenance("other.json", digest), "lineage.provenance.files[0].path"),
        (provenance("config.json", "0" * 64), "lineage.provenance.files[0].sha256"),
    ):
        with pytest.raises(InvalidArgument) as refused:
            await registry.push_plan(plan, "a/b", kind=pb.VERSION_KIND_BASE, lineage=lineage)
        assert refused.value.field == field
    version = await registry.push_plan(
        plan, "a/b", kind=pb.VERSION_KIND_BASE, lineage=provenance("config.json", digest)
    )
    assert version.lineage.provenance.files[0].sha256 == digest


def test_a_manifest_without_provenance_keeps_its_digest() -> None:
    """Manifests written before `provenance` existed show the manifest_sha256 they had."""
    import hashlib
    from datetime import UTC, datetime

    from forgeline_registry.manifests import ArtifactRecord, VersionManifest

    manifest = VersionManifest(
        model="m",
        number=1,
        kind="VERSION_KIND_BASE",
        artifacts=(
            ArtifactRecord(path="a", kind="ARTIFACT_KIND_OTHER", sha256="0" * 64, size_bytes=1),
        ),
        create_time=datetime.now(UTC),
        upload_id="up-1",
    )
    content = manifest.model_dump(
        mode="json", include={"model", "number", "kind", "artifacts", "lineage"}
    )
    del content["lineage"]["provenance"]
    before = hashlib.sha256(
        json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert manifest.content_sha256() == before


# --- imports through the real clients ----------------------------------------------------------


async def test_an_hf_import_registers_the_model_with_its_commit_and_digests(
    registry: RegistryClient, hf_hub: tuple[FakeHfHub, FakeServer], repo_dir: Path, hub_env: Path
) -> None:
    fake, server = hf_hub
    repo_id = _repo_id()
    repo = fake.add_repo(repo_id, repo_dir)
    result = await import_model(registry, f"hf:{repo_id}")
    version = result.version
    assert not result.reused
    assert (version.model, version.number, version.kind) == (repo_id, 1, pb.VERSION_KIND_BASE)
    expected = _expected_files(repo)
    assert {a.path: a.sha256 for a in version.artifacts} == expected
    provenance = version.lineage.provenance
    assert (provenance.hub, provenance.repo_id, provenance.revision, provenance.commit) == (
        "huggingface",
        repo_id,
        "main",
        repo.commit,
    )
    assert provenance.endpoint == server.url
    hub_digests = {f.path: f.hub_digest for f in provenance.files}
    assert {f.path: f.sha256 for f in provenance.files} == expected
    # LFS files carry the hub's sha256, files in Git their Git blob id: both were checked.
    assert hub_digests["model.safetensors"] == f"sha256:{repo.files['model.safetensors'].sha256}"
    assert hub_digests["config.json"] == f"git-blob-sha1:{repo.files['config.json'].git_oid}"
    assert dict(version.labels) == {
        "hub": "huggingface",
        "hub.repo": repo_id,
        "hub.revision": "main",
        "hub.commit": repo.commit,
    }
    assert version.lineage.chat_template  # from tokenizer_config.json
    assert version.lineage.tool_versions["huggingface_hub"]
    assert set(result.skipped) == set(DUPLICATES)
    _assert_never_requested(fake.requests, repo)
    # The cache is removed once the model is in the registry.
    assert not (hub_env / "huggingface").exists() or not any((hub_env / "huggingface").iterdir())


@pytest.mark.parametrize("variable", ["MODELSCOPE_ENDPOINT", "MODELSCOPE_DOMAIN"])
async def test_a_modelscope_import_registers_the_model_with_its_commit_and_digests(
    registry: RegistryClient,
    modelscope: tuple[FakeModelScope, FakeServer],
    repo_dir: Path,
    variable: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The mirror is named by MODELSCOPE_ENDPOINT or by MODELSCOPE_DOMAIN, which modelscope_hub
    0.5.1 (config.py) still reads, with a FutureWarning, when the first is unset."""
    if variable == "MODELSCOPE_DOMAIN":
        monkeypatch.delenv("MODELSCOPE_ENDPOINT")
        monkeypatch.setenv("MODELSCOPE_DOMAIN", modelscope[1].url)
    fake, server = modelscope
    repo_id = _repo_id()
    repo = fake.add_repo(repo_id, repo_dir)
    if variable == "MODELSCOPE_DOMAIN":
        with pytest.warns(FutureWarning, match="MODELSCOPE_DOMAIN is deprecated"):
            result = await import_model(registry, f"modelscope:{repo_id}", name="tiny-from-ms")
    else:
        result = await import_model(registry, f"modelscope:{repo_id}", name="tiny-from-ms")
    version = result.version
    assert (version.model, version.kind) == ("tiny-from-ms", pb.VERSION_KIND_BASE)
    assert {a.path: a.sha256 for a in version.artifacts} == _expected_files(repo)
    provenance = version.lineage.provenance
    assert (provenance.hub, provenance.repo_id, provenance.revision, provenance.commit) == (
        "modelscope",
        repo_id,
        "master",
        repo.commit,
    )
    assert provenance.endpoint == server.url
    assert all(f.hub_digest == f"sha256:{f.sha256}" for f in provenance.files)
    _assert_never_requested(fake.requests, repo)


async def test_importing_the_same_commit_again_finds_the_earlier_version(
    registry: RegistryClient, hf_hub: tuple[FakeHfHub, FakeServer], repo_dir: Path
) -> None:
    fake, _ = hf_hub
    repo_id = _repo_id()
    fake.add_repo(repo_id, repo_dir)
    first = await import_model(registry, f"hf:{repo_id}")
    downloads = len([r for r in fake.requests if r.method == "GET" and "/resolve/" in r.path])
    again = await import_model(registry, f"hf:{repo_id}@main")
    assert again.reused
    assert (again.version.model, again.version.number) == (first.version.model, 1)
    after = len([r for r in fake.requests if r.method == "GET" and "/resolve/" in r.path])
    assert after == downloads, "nothing is downloaded again"
    # The gateway's way: by hub id, without reaching the hub when imports are off.
    importer = HubImporter(registry, allow_downloads=False)
    found = await importer.base_version(f"hf:{repo_id}")
    assert (found.model, found.number) == (repo_id, 1)
    with pytest.raises(FailedPrecondition, match="FORGELINE_GATEWAY_HUB_IMPORTS"):
        await importer.base_version(f"hf:{repo_id}@other-branch")


async def test_a_dropped_connection_is_resumed_with_a_range_request(
    registry: RegistryClient,
    hf_hub: tuple[FakeHfHub, FakeServer],
    repo_dir: Path,
    tmp_path: Path,
) -> None:
    """huggingface_hub writes whole 10 MiB chunks (DOWNLOAD_CHUNK_SIZE): the weights here are
    bigger than two, the connection drops in the second, and the retry asks for the rest."""
    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

    big = tmp_path / "repo"
    shutil.copytree(repo_dir, big)
    (big / "model.safetensors").write_bytes(os.urandom(2 * DOWNLOAD_CHUNK_SIZE + 12345))
    fake, _ = hf_hub
    repo_id = _repo_id()
    repo = fake.add_repo(repo_id, big)
    weights = repo.files["model.safetensors"]
    cut = DOWNLOAD_CHUNK_SIZE + DOWNLOAD_CHUNK_SIZE // 2
    fake.faults.drop("model.safetensors", cut)
    start = len(fake.requests)
    result = await import_model(registry, f"hf:{repo_id}")
    gets = gets_of(fake.requests[start:], weights.sha256)
    assert len(gets) == 2
    assert "range" not in gets[0].headers
    assert gets[1].headers["range"] == f"bytes={DOWNLOAD_CHUNK_SIZE}-"
    digests = {a.path: a.sha256 for a in result.version.artifacts}
    assert digests["model.safetensors"] == weights.sha256


async def test_a_modelscope_download_cut_short_is_resumed_by_the_next_attempt(
    registry: RegistryClient,
    modelscope: tuple[FakeModelScope, FakeServer],
    repo_dir: Path,
    hub_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first attempt gives up (no retries: MODELSCOPE_DOWNLOAD_MAX_RETRIES=0) with part of
    the weights on disk; the next one asks only for the rest."""
    import modelscope_hub._download

    monkeypatch.setattr(modelscope_hub._download, "DOWNLOAD_RETRY_TIMES", 0)
    fake, _ = modelscope
    repo_id = _repo_id()
    repo = fake.add_repo(repo_id, repo_dir)
    weights = repo.files["model.safetensors"]
    cut = weights.size // 3
    fake.faults.drop("model.safetensors", cut)
    start = len(fake.requests)
    with pytest.raises(Unavailable, match="running the import again resumes"):
        await import_model(registry, f"modelscope:{repo_id}")
    assert _partial_sizes(hub_env) == [cut]
    result = await import_model(registry, f"modelscope:{repo_id}")
    gets = gets_of(fake.requests[start:], "model.safetensors")
    assert [g.headers.get("range") for g in gets] == [None, f"bytes={cut}-"]
    digests = {a.path: a.sha256 for a in result.version.artifacts}
    assert digests["model.safetensors"] == weights.sha256


async def test_a_repository_that_needs_remote_code_is_refused_unless_trusted(
    registry: RegistryClient, hf_hub: tuple[FakeHfHub, FakeServer], remote_code_dir: Path
) -> None:
    fake, _ = hf_hub
    repo_id = _repo_id()
    repo = fake.add_repo(repo_id, remote_code_dir)
    start = len(fake.requests)
    with pytest.raises(FailedPrecondition) as refused:
        await import_model(registry, f"hf:{repo_id}")
    message = refused.value.message
    assert "config.json has an auto_map (modeling_tiny.TinyForCausalLM)" in message
    assert "modeling_tiny.py" in message
    assert f"forgeline import hf:{repo_id}@main --trust-remote-code" in message
    # Only the small metadata files were read; no weights, no code.
    assert not gets_of(fake.requests[start:], repo.files["model.safetensors"].sha256)
    assert not gets_of(fake.requests[start:], "modeling_tiny.py")
    models = await registry.list_models(pb.ListModelsRequest(name_prefix=repo_id))
    assert not models.models
    # The gateway never trusts it either.
    with pytest.raises(FailedPrecondition, match="trust-remote-code"):
        await HubImporter(registry, allow_downloads=True).base_version(f"hf:{repo_id}")

    trusted = await import_model(registry, f"hf:{repo_id}", trust_remote_code=True)
    paths = {a.path for a in trusted.version.artifacts}
    assert "modeling_tiny.py" in paths
    assert trusted.version.labels["trust_remote_code"] == "true"


async def test_a_download_that_does_not_match_the_hubs_digest_is_refused(
    registry: RegistryClient, hf_hub: tuple[FakeHfHub, FakeServer], repo_dir: Path
) -> None:
    fake, _ = hf_hub
    repo_id = _repo_id()
    fake.add_repo(repo_id, repo_dir)
    fake.faults.corrupt.add("tokenizer_config.json")
    try:
        with pytest.raises(FailedPrecondition, match="does not match the hub's listing"):
            await import_model(registry, f"hf:{repo_id}")
    finally:
        fake.faults.corrupt.discard("tokenizer_config.json")
    models = await registry.list_models(pb.ListModelsRequest(name_prefix=repo_id))
    assert not models.models


async def test_a_gated_repository_is_downloaded_with_the_token(
    registry: RegistryClient,
    hf_hub: tuple[FakeHfHub, FakeServer],
    repo_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, _ = hf_hub
    repo_id = _repo_id()
    fake.add_repo(repo_id, repo_dir, token="hf_granted")
    with pytest.raises(PermissionDenied, match=r"gated.*HF_TOKEN"):
        await import_model(registry, f"hf:{repo_id}")
    monkeypatch.setenv("HF_TOKEN", "hf_granted")
    result = await import_model(registry, f"hf:{repo_id}")
    assert result.version.number == 1
    resolves = [r for r in fake.requests if f"/{repo_id}/resolve/" in r.path]
    assert resolves[-1].headers["authorization"] == "Bearer hf_granted"


# --- the command line --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("cli-registry")
    process = RegistryProcess(
        {"FORGELINE_REGISTRY_STORAGE": "fs", "FORGELINE_REGISTRY_FS_ROOT": str(root)}
    ).wait_serving()
    yield process.target
    process.stop()


def _forgeline(address: str, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="forgeline")
    register_registry_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([*argv, "--registry", address])
    code: int = args.run(args)
    return code


def test_forgeline_import_prints_what_it_registered_and_what_it_left_out(
    registry_address: str,
    hf_hub: tuple[FakeHfHub, FakeServer],
    remote_code_dir: Path,
    repo_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake, _ = hf_hub
    repo_id = _repo_id()
    repo = fake.add_repo(repo_id, repo_dir)
    assert _forgeline(registry_address, "import", f"hf:{repo_id}") == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith(f"imported hf:{repo_id}@main (commit {repo.commit[:12]}) as ")
    assert f"{repo_id}:1  base  {len(_expected_files(repo))} files" in lines[0]
    assert "  left out pytorch_model.bin: a copy of the weights in another format" in lines
    assert f"hf:{repo_id}@main is commit {repo.commit} on " in err

    assert _forgeline(registry_address, "import", f"hf:{repo_id}", "--json") == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["reused"] is True
    assert answer["commit"] == repo.commit
    assert answer["version"]["lineage"]["provenance"]["repoId"] == repo_id

    remote = _repo_id()
    fake.add_repo(remote, remote_code_dir)
    assert _forgeline(registry_address, "import", f"hf:{remote}", "--name", "mine/tiny") == 1
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(f"forgeline: hf:{remote}@main needs code from the repository to load")
    assert "--trust-remote-code" in last
