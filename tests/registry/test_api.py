"""The registry's API over real gRPC sockets, on every store: versions, dedup, idempotency,
aliases, lineage, listing and deletion with garbage collection."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from forgeline_kit.errors import Aborted, FailedPrecondition, NotFound
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.registry.v1 import registry_pb2 as pb
from forgeline_registry_client.client import RegistryClient

from .helpers import same_tree, write_model_dir

pytestmark = pytest.mark.asyncio(loop_scope="module")

Names = Callable[[str], str]


async def test_push_then_pull_gives_back_the_same_files(
    client: RegistryClient, names: Names, tmp_path: Path
) -> None:
    model = names("acme/tiny")
    source = write_model_dir(tmp_path / "src", weights_bytes=6 << 20)
    (source / "sub").mkdir()
    (source / "sub" / "notes.md").write_text("nested files keep their paths")
    version = await client.push(source, model, description="first")
    assert (version.model, version.number, version.kind) == (model, 1, pb.VERSION_KIND_BASE)
    assert version.aliases == ["latest"]
    kinds = {a.path: a.kind for a in version.artifacts}
    assert kinds["model.safetensors"] == pb.ARTIFACT_KIND_HF_WEIGHTS
    assert kinds["tokenizer.json"] == pb.ARTIFACT_KIND_TOKENIZER
    assert kinds["config.json"] == pb.ARTIFACT_KIND_MODEL_CONFIG
    assert {a.path: a.media_type for a in version.artifacts}["config.json"] == "application/json"
    pulled = await client.pull(model, tmp_path / "out")
    assert pulled.number == 1
    assert same_tree(source, tmp_path / "out")


async def test_identical_blobs_are_stored_once(
    client: RegistryClient, names: Names, tmp_path: Path
) -> None:
    model = names("m")
    await client.push(write_model_dir(tmp_path / "a", seed=1), model)
    plan, kind = await client.plan(write_model_dir(tmp_path / "b", seed=2))
    begin = await client.begin_version(
        pb.BeginVersionRequest(
            model=model, kind=kind, artifacts=plan.artifacts, transfer=client.transfer_options
        )
    )
    tokenizer = next(a.sha256 for a in plan.artifacts if a.path == "tokenizer.json")
    assert tokenizer in begin.present_sha256
    assert tokenizer not in {g.sha256 for g in begin.grants}
    assert len(begin.grants) == 2
    await client.abort_version(pb.AbortVersionRequest(upload_id=begin.upload_id))


async def test_repeating_a_request_id_returns_the_same_upload_then_the_same_version(
    client: RegistryClient, names: Names, tmp_path: Path
) -> None:
    model = names("m")
    plan, kind = await client.plan(write_model_dir(tmp_path / "a", seed=3))
    request = pb.BeginVersionRequest(
        model=model,
        create_model=True,
        kind=kind,
        artifacts=plan.artifacts,
        request_id="job-1/adapter",
        transfer=client.transfer_options,
    )
    first = await client.begin_version(request)
    again = await client.begin_version(request)
    assert again.upload_id == first.upload_id
    multipart = await client.upload(first, plan)
    version = await client.commit_version(
        pb.CommitVersionRequest(upload_id=first.upload_id, multipart_uploads=multipart)
    )
    retried = await client.commit_version(pb.CommitVersionRequest(upload_id=first.upload_id))
    assert retried.number == version.number == 1
    after = await client.begin_version(request)
    assert after.committed_version.number == 1
    assert not after.upload_id
    listed = await client.list_versions(pb.ListVersionsRequest(model=model))
    assert [v.number for v in listed.versions] == [1]


async def test_aliases_move_by_compare_and_swap(
    client: RegistryClient, names: Names, tmp_path: Path
) -> None:
    model = names("m")
    for seed in range(3):
        await client.push(write_model_dir(tmp_path / str(seed), seed=seed), model)
    alias = await client.set_alias(
        pb.SetAliasRequest(model=model, alias="production", version=1, expected_version=0)
    )
    assert alias.version == 1
    with pytest.raises(Aborted, match="points at version 1, not 2"):
        await client.set_alias(
            pb.SetAliasRequest(model=model, alias="production", version=3, expected_version=2)
        )
    await client.set_alias(
        pb.SetAliasRequest(model=model, alias="production", version=3, expected_version=1)
    )
    resolved = await client.resolve_version(
        pb.ResolveVersionRequest(reference=f"{model}@production")
    )
    assert resolved.number == 3
    assert sorted(resolved.aliases) == ["latest", "production"]
    found = await client.get_model(pb.GetModelRequest(name=model))
    assert dict(found.aliases) == {"latest": 3, "production": 3}
    assert (found.latest_version, found.version_count) == (3, 3)
    await client.delete_alias(pb.DeleteAliasRequest(model=model, alias="production"))
    with pytest.raises(NotFound, match=f"{model}@production"):
        await client.resolve_version(pb.ResolveVersionRequest(reference=f"{model}@production"))


async def test_lineage_records_parents_and_finds_children(
    client: RegistryClient, names: Names, tmp_path: Path
) -> None:
    base, tuned, gguf_model = names("base"), names("ft/base-demo"), names("ft/base-demo-gguf")
    await client.push(write_model_dir(tmp_path / "base"), base)
    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir()
    (adapter_dir / "adapter_config.json").write_text("{}")
    (adapter_dir / "adapter_model.safetensors").write_bytes(b"lora")
    parent = pb.Parent(
        version=common_pb2.VersionRef(model=base, alias="latest"),
        relation=pb.RELATION_ADAPTER_OF,
    )
    adapter = await client.push(
        adapter_dir,
        tuned,
        lineage=pb.Lineage(parents=[parent], metrics={"train_loss": 0.5}, template="chatml"),
    )
    assert adapter.kind == pb.VERSION_KIND_ADAPTER
    assert adapter.lineage.parents[0].version.version == 1  # resolved from @latest
    assert adapter.lineage.metrics["train_loss"] == 0.5
    gguf_dir = tmp_path / "gguf"
    gguf_dir.mkdir()
    (gguf_dir / "model-Q4_K_M.gguf").write_bytes(b"GGUF")
    (gguf_dir / "Modelfile").write_text("FROM ./model-Q4_K_M.gguf\n")
    converted = pb.Parent(
        version=common_pb2.VersionRef(model=tuned, version=1),
        relation=pb.RELATION_CONVERTED_FROM,
    )
    gguf = await client.push(gguf_dir, gguf_model, lineage=pb.Lineage(parents=[converted]))
    assert gguf.kind == pb.VERSION_KIND_GGUF
    assert {a.path: a.gguf_file_type for a in gguf.artifacts}["model-Q4_K_M.gguf"] == "Q4_K_M"

    down = await client.get_lineage(
        pb.GetLineageRequest(
            model=base, version=1, direction=pb.LINEAGE_DIRECTION_DESCENDANTS, max_depth=5
        )
    )
    edges = {(e.parent.model, e.child.model, e.relation) for e in down.edges}
    assert edges == {
        (base, tuned, pb.RELATION_ADAPTER_OF),
        (tuned, gguf_model, pb.RELATION_CONVERTED_FROM),
    }
    assert {v.model for v in down.versions} == {base, tuned, gguf_model}
    up = await client.get_lineage(pb.GetLineageRequest(model=gguf_model, version=1, max_depth=1))
    assert {(e.parent.model, e.child.model) for e in up.edges} == {(tuned, gguf_model)}
    children = await client.list_versions(
        pb.ListVersionsRequest(model=tuned, parent=common_pb2.VersionRef(model=base, version=1))
    )
    assert [v.number for v in children.versions] == [1]

    # A deleted parent stays in its children's lineage, as an edge without a version.
    await client.delete_version(pb.DeleteVersionRequest(model=base, version=1))
    orphan = await client.get_lineage(pb.GetLineageRequest(model=tuned, version=1))
    assert {(e.parent.model, e.child.model) for e in orphan.edges} == {
        (base, tuned),
        (tuned, gguf_model),
    }
    assert {v.model for v in orphan.versions} == {tuned, gguf_model}


async def test_list_versions_filters_and_pages(
    client: RegistryClient, names: Names, tmp_path: Path
) -> None:
    model = names("m")
    for seed in range(5):
        await client.push(
            write_model_dir(tmp_path / str(seed), seed=seed),
            model,
            labels={"parity": "even" if seed % 2 == 0 else "odd"},
        )
    seen: list[int] = []
    token = ""
    for _ in range(5):
        page = await client.list_versions(
            pb.ListVersionsRequest(
                model=model, page_size=2, page_token=token, order_by="number desc"
            )
        )
        seen += [v.number for v in page.versions]
        assert all(not v.artifacts and v.artifact_count == 3 for v in page.versions)
        token = page.next_page_token
        if not token:
            break
    assert seen == [5, 4, 3, 2, 1]
    even = await client.list_versions(
        pb.ListVersionsRequest(model=model, labels={"parity": "even"})
    )
    assert [v.number for v in even.versions] == [1, 3, 5]
    models = await client.list_models(pb.ListModelsRequest(name_prefix=model))
    assert [m.name for m in models.models] == [model]


async def test_deleting_versions_collects_only_unreferenced_blobs(
    client: RegistryClient, names: Names, tmp_path: Path
) -> None:
    model = names("m")
    # The weights are unique to this test: other tests' versions must not share its blobs.
    first = write_model_dir(tmp_path / "a", seed=101, weights_bytes=1000)
    await client.push(first, model)
    await client.push(write_model_dir(tmp_path / "b", seed=102, weights_bytes=2000), model)
    await client.set_alias(pb.SetAliasRequest(model=model, alias="production", version=2))
    with pytest.raises(FailedPrecondition, match="production"):
        await client.delete_version(pb.DeleteVersionRequest(model=model, version=2))
    freed = await client.delete_version(pb.DeleteVersionRequest(model=model, version=2, force=True))
    # config.json and model.safetensors were version 2's own; tokenizer.json is shared.
    assert freed.collected_blobs == 2
    assert freed.reclaimed_bytes == 2000 + len('{"seed": 102}')
    found = await client.get_model(pb.GetModelRequest(name=model))
    assert (dict(found.aliases), found.latest_version, found.version_count) == (
        {"latest": 1},
        1,
        1,
    )
    await client.pull(model, tmp_path / "out")
    assert same_tree(first, tmp_path / "out")
    with pytest.raises(NotFound, match=f"{model}:2"):
        await client.get_version(pb.GetVersionRequest(model=model, version=2))
    third = await client.push(write_model_dir(tmp_path / "c", seed=103), model)
    assert third.number == 3  # numbers are never handed out twice, even after a delete
    with pytest.raises(FailedPrecondition, match="still has 2 version"):
        await client.delete_model(pb.DeleteModelRequest(name=model))
    await client.delete_model(pb.DeleteModelRequest(name=model, force=True))
    with pytest.raises(NotFound, match=f"'{model}'"):
        await client.get_model(pb.GetModelRequest(name=model))


async def test_update_changes_only_mutable_fields(
    client: RegistryClient, names: Names, tmp_path: Path
) -> None:
    model = names("m")
    version = await client.push(write_model_dir(tmp_path / "a"), model)
    updated = await client.update_version(
        pb.UpdateVersionRequest(
            version=pb.Version(model=model, number=1, description="better", labels={"k": "v"})
        )
    )
    assert (updated.description, dict(updated.labels)) == ("better", {"k": "v"})
    assert updated.manifest_sha256 == version.manifest_sha256
    found = await client.update_model(
        pb.UpdateModelRequest(model=pb.Model(name=model, description="tiny"))
    )
    assert found.description == "tiny"
