"""Registering a finished job's results: adapter, merged model or fine-tuned model, with lineage.

Pushes use request ids derived from the job, so redoing REGISTERING after a restart returns the
versions already committed instead of adding new ones. The merged model is pushed after the
adapter; if it cannot be, the adapter is deleted again, so a failed job leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from pathlib import Path
from typing import Final

import grpc
from google.protobuf.struct_pb2 import Struct

from forgeline_kit.errors import ForgelineError
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.registry.v1 import registry_pb2 as rpb
from forgeline_proto.trainer.v1 import trainer_pb2 as pb
from forgeline_registry_client.client import RegistryClient
from forgeline_trainer.jobs.workspace import JobWorkspace, Validated, text_argument

__all__ = ["Registered", "output_model", "register_results"]

_TOOLS: Final = ("llamafactory", "transformers", "torch", "peft")


def output_model(job: pb.Job, base_model: str) -> str:
    """The registry model receiving the job's results."""
    return job.spec.output.model or f"{base_model}-ft"


def _tool_versions() -> dict[str, str]:
    versions = {}
    for tool in _TOOLS:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[tool] = importlib.metadata.version(tool)
    return versions


def _lineage(
    job: pb.Job,
    validated: Validated,
    parents: list[rpb.Parent],
    metrics: dict[str, float],
) -> rpb.Lineage:
    for record in validated.datasets:
        relation = rpb.RELATION_VALIDATED_ON if record.evaluation else rpb.RELATION_TRAINED_ON
        parents.append(
            rpb.Parent(
                version=common_pb2.VersionRef(model=record.model, version=record.version),
                relation=relation,
            )
        )
    config = Struct()
    config.CopyFrom(job.effective_arguments)
    return rpb.Lineage(
        parents=parents,
        datasets=[
            rpb.DatasetDigest(
                name=r.name, sha256=r.sha256, format=r.format, record_count=r.record_count
            )
            for r in validated.datasets
        ],
        training_config=config,
        template=text_argument(job, "template"),
        chat_template=validated.chat_template,
        metrics=metrics,
        tool_versions=_tool_versions(),
        produced_by=f"trainer/jobs/{job.id}",
    )


class Registered:
    """The versions a job registered (resolved references)."""

    def __init__(self) -> None:
        self.adapter: common_pb2.VersionRef | None = None
        self.merged: common_pb2.VersionRef | None = None
        self.trained_model: common_pb2.VersionRef | None = None
        #: Registered checkpoints by step (``output.register_checkpoints``).
        self.checkpoints: dict[int, common_pb2.VersionRef] = {}


def _ref(version: rpb.Version) -> common_pb2.VersionRef:
    return common_pb2.VersionRef(model=version.model, version=version.number)


class _Pushes:
    """The pushes of one registration, undone together if one of them fails."""

    def __init__(self, client: RegistryClient, job: pb.Job, model: str) -> None:
        self.client = client
        self.model = model
        self.labels = dict(job.spec.output.labels) | {"job": job.id}
        self.description = job.spec.output.description
        self.request_prefix = job.id
        self.done: list[rpb.Version] = []

    async def push(
        self,
        directory: Path,
        kind: rpb.VersionKind.ValueType,
        lineage: rpb.Lineage,
        name: str,
        labels: dict[str, str] | None = None,
    ) -> common_pb2.VersionRef:
        version = await self.client.push(
            directory,
            self.model,
            kind=kind,
            lineage=lineage,
            labels=self.labels | (labels or {}),
            description=self.description,
            request_id=f"{self.request_prefix}-{name}",
        )
        self.done.append(version)
        return _ref(version)

    async def undo(self) -> None:
        for version in reversed(self.done):
            with contextlib.suppress(grpc.RpcError, ForgelineError):
                await self.client.delete_version(
                    rpb.DeleteVersionRequest(
                        model=version.model, version=version.number, force=True
                    )
                )


async def register_results(
    client: RegistryClient,
    job: pb.Job,
    workspace: JobWorkspace,
    validated: Validated,
    metrics: dict[str, float],
    *,
    merged_dir: Path | None,
    checkpoints: list[tuple[int, Path]],
) -> Registered:
    """Push the job's results: for a LoRA job the adapter then (unless ``merged_dir`` is None)
    the merged model, for full/freeze the fine-tuned model; then ``checkpoints`` (step,
    directory) as CHECKPOINT versions of the final result. Nothing stays registered if any
    push fails."""
    base = common_pb2.VersionRef(model=validated.base_model, version=validated.base_version)
    pushes = _Pushes(client, job, output_model(job, validated.base_model))
    result = Registered()
    try:
        await _push_all(pushes, result, job, workspace, validated, metrics, base, merged_dir)
        final = result.trained_model or result.adapter
        assert final is not None
        for step, directory in checkpoints:
            parent = rpb.Parent(version=final, relation=rpb.RELATION_CHECKPOINT_OF)
            result.checkpoints[step] = await pushes.push(
                directory,
                rpb.VERSION_KIND_CHECKPOINT,
                _lineage(job, validated, [parent], {}),
                f"checkpoint-{step}",
                {"step": str(step)},
            )
    except BaseException:
        await pushes.undo()
        raise
    return result


async def _push_all(
    pushes: _Pushes,
    result: Registered,
    job: pb.Job,
    workspace: JobWorkspace,
    validated: Validated,
    metrics: dict[str, float],
    base: common_pb2.VersionRef,
    merged_dir: Path | None,
) -> None:
    trained = workspace.publishable_output()
    if text_argument(job, "finetuning_type") != "lora":
        parent = rpb.Parent(version=base, relation=rpb.RELATION_BASE)
        result.trained_model = await pushes.push(
            trained,
            rpb.VERSION_KIND_FINETUNED,
            _lineage(job, validated, [parent], metrics),
            "model",
        )
        return
    parent = rpb.Parent(version=base, relation=rpb.RELATION_ADAPTER_OF)
    result.adapter = await pushes.push(
        trained, rpb.VERSION_KIND_ADAPTER, _lineage(job, validated, [parent], metrics), "adapter"
    )
    if merged_dir is None:
        return
    parents = [
        rpb.Parent(version=base, relation=rpb.RELATION_MERGED_FROM),
        rpb.Parent(version=result.adapter, relation=rpb.RELATION_MERGED_FROM),
    ]
    result.merged = await pushes.push(
        merged_dir,
        rpb.VERSION_KIND_MERGED,
        _lineage(job, validated, parents, metrics),
        "merged",
        {"merged": "true"},
    )
