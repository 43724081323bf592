"""Every fault of the issue's "Bad input and faults" list, over real gRPC sockets: unknown names,
digest mismatches and invalid names, on every store. (The object store going away and coming
back is in test_outage.py.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from forgeline_kit.errors import FailedPrecondition, InvalidArgument, NotFound
from forgeline_proto.registry.v1 import registry_pb2 as pb
from forgeline_registry_client.client import RegistryClient

from .helpers import artifact, same_tree, write_model_dir

pytestmark = pytest.mark.asyncio(loop_scope="module")

Names = Callable[[str], str]


async def test_unknown_model_version_and_alias_are_not_found_by_name(
    client: RegistryClient, names: Names, tmp_path: Path
) -> None:
    with pytest.raises(NotFound, match="model 'nope' not found"):
        await client.get_model(pb.GetModelRequest(name="nope"))
    with pytest.raises(NotFound, match="model 'nope' not found"):
        await client.get_version(pb.GetVersionRequest(model="nope", version=1))
    model = names("m")
    await client.push(write_model_dir(tmp_path / "a"), model)
    with pytest.raises(NotFound, match=f"version {model}:7 not found"):
        await client.get_version(pb.GetVersionRequest(model=model, version=7))
    with pytest.raises(NotFound, match=f"alias {model}@staging not found"):
        await client.resolve_version(pb.ResolveVersionRequest(reference=f"{model}@staging"))
    with pytest.raises(NotFound, match=f"version {model}:7 not found"):
        await client.pull(f"{model}:7", tmp_path / "out")
    assert not (tmp_path / "out").exists()


async def test_a_digest_mismatch_is_rejected_and_leaves_nothing_visible(
    client: RegistryClient, names: Names, tmp_path: Path
) -> None:
    model = names("m")
    source = write_model_dir(tmp_path / "src", seed=7, weights_bytes=6 << 20)
    plan, kind = await client.plan(source)
    begin = await client.begin_version(
        pb.BeginVersionRequest(
            model=model,
            create_model=True,
            kind=kind,
            artifacts=plan.artifacts,
            transfer=client.transfer_options,
        )
    )
    # The file changes between hashing and upload: same size, other bytes.
    weights = source / "model.safetensors"
    weights.write_bytes(b"\0" * weights.stat().st_size)
    multipart = await client.upload(begin, plan)
    with pytest.raises(
        FailedPrecondition, match=r"model\.safetensors.*nothing was stored"
    ) as caught:
        await client.commit_version(
            pb.CommitVersionRequest(upload_id=begin.upload_id, multipart_uploads=multipart)
        )
    assert caught.value.field == "artifacts[1].sha256"  # config, model, tokenizer
    listed = await client.list_versions(pb.ListVersionsRequest(model=model))
    assert list(listed.versions) == []
    with pytest.raises(NotFound, match="has no versions"):
        await client.pull(model, tmp_path / "out")
    # Nothing blocks a retry of the same content: the bad bytes are gone.
    retry = await client.push(source, model)
    assert retry.number == 1
    await client.pull(model, tmp_path / "out")
    assert same_tree(source, tmp_path / "out")


async def test_commit_before_upload_names_the_missing_artifact(
    client: RegistryClient, names: Names
) -> None:
    begin = await client.begin_version(
        pb.BeginVersionRequest(
            model=names("m"),
            create_model=True,
            kind=pb.VERSION_KIND_OTHER,
            artifacts=[artifact("notes/a.txt", names("never sent").encode())],
            transfer=client.transfer_options,
        )
    )
    with pytest.raises(FailedPrecondition, match=r"'notes/a\.txt'") as caught:
        await client.commit_version(pb.CommitVersionRequest(upload_id=begin.upload_id))
    assert caught.value.field == "artifacts[0]"


BAD_MODEL_NAMES = ["../etc", "a/../b", "bad\x00name", "tab\tname", "x" * 129, "a/b/c", "", "-x"]
BAD_PATHS = ["../../etc/passwd", "/etc/passwd", "a/./b", "a\\b", "a//b", "x\x1b[31m", "p" * 1025]


async def test_invalid_names_and_paths_are_refused_naming_the_field(
    client: RegistryClient,
) -> None:
    for name in BAD_MODEL_NAMES:
        with pytest.raises(InvalidArgument) as caught:
            await client.begin_version(
                pb.BeginVersionRequest(
                    model=name,
                    create_model=True,
                    kind=pb.VERSION_KIND_OTHER,
                    artifacts=[artifact("a.txt", b"a")],
                    transfer=client.transfer_options,
                )
            )
        assert caught.value.field == "model", name
        with pytest.raises(InvalidArgument) as caught:
            await client.create_model(pb.CreateModelRequest(model=pb.Model(name=name)))
        assert caught.value.field == "model.name", name
    for path in BAD_PATHS:
        with pytest.raises(InvalidArgument) as caught:
            await client.begin_version(
                pb.BeginVersionRequest(
                    model="m",
                    create_model=True,
                    kind=pb.VERSION_KIND_OTHER,
                    artifacts=[artifact("ok.txt", b"a"), artifact(path, b"b")],
                    transfer=client.transfer_options,
                )
            )
        assert caught.value.field == "artifacts[1].path", path


async def test_invalid_aliases_and_references_are_refused(
    client: RegistryClient, names: Names, tmp_path: Path
) -> None:
    model = names("m")
    await client.push(write_model_dir(tmp_path / "a"), model)
    for alias in ("Prod", "a" * 64, "9lives", "a/b", "x\ny"):
        with pytest.raises(InvalidArgument) as caught:
            await client.set_alias(pb.SetAliasRequest(model=model, alias=alias, version=1))
        assert caught.value.field == "alias"
    with pytest.raises(InvalidArgument, match="positive number"):
        await client.resolve_version(pb.ResolveVersionRequest(reference=f"{model}:zero"))
    with pytest.raises(InvalidArgument, match="'latest' cannot be deleted"):
        await client.delete_alias(pb.DeleteAliasRequest(model=model, alias="latest"))
