"""VALIDATING: the job's base model and datasets fetched from the registry, every dataset record
checked (and OpenAI chat or preference data converted for LLaMA-Factory), ``dataset_info.json``
written, the chat template checked against the tokenizer, and what was validated recorded in the
job's workspace for the later stages.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from forgeline_kit import datasets as kit_datasets
from forgeline_kit.datasets import DatasetSpec, InvalidDataset, validate_dataset
from forgeline_kit.errors import ForgelineError, InvalidArgument
from forgeline_kit.operations import OperationFailure
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.trainer.v1 import trainer_pb2 as pb
from forgeline_registry_client.client import RegistryClient
from forgeline_trainer.jobs.hub import JobHub
from forgeline_trainer.jobs.job_errors import registry_failure
from forgeline_trainer.jobs.workspace import DatasetRecord, JobWorkspace, Validated, text_argument
from forgeline_trainer.llamafactory.chat_template import TemplateMismatch, check_chat_template
from forgeline_trainer.llamafactory.combinations import DeviceKind
from forgeline_trainer.llamafactory.policy import JobPolicy
from forgeline_trainer.submission import DatasetPlan, plan_job

__all__ = ["validate_inputs"]


def _reference(ref: common_pb2.VersionRef) -> str:
    selector = ref.WhichOneof("selector")
    if selector == "version":
        return f"{ref.model}:{ref.version}"
    return f"{ref.model}@{ref.alias or 'latest'}"


async def validate_inputs(
    job: pb.Job,
    workspace: JobWorkspace,
    *,
    hub: JobHub,
    registry: Callable[[], RegistryClient],
    device: DeviceKind,
    policy: JobPolicy,
) -> None:
    """Fetch the job's base model and datasets into ``workspace``, check them, and record what
    was validated (what training, the merge and registering read back)."""
    try:
        plan = plan_job(job.spec, device=device, policy=policy)
    except InvalidArgument as error:
        raise OperationFailure("invalid_argument", str(error), field=error.field or "") from error
    shutil.rmtree(workspace.root, ignore_errors=True)
    workspace.root.mkdir(parents=True)
    base_ref = plan.base_model if isinstance(plan.base_model, str) else _reference(plan.base_model)
    async with registry() as client:
        try:
            base = await client.pull(base_ref, workspace.base)
        except (grpc.RpcError, ForgelineError) as error:
            raise registry_failure(error, f"base model '{base_ref}'") from error
        hub.emit(job, f"Fetched base model {base.model}:{base.number}")
        records = []
        specs = []
        for dataset in plan.datasets:
            record, spec = await _fetch_dataset(client, dataset, workspace)
            records.append(record)
            specs.append(spec)
    hub.emit(job, f"Validated {len(records)} dataset(s)")
    template = text_argument(job, "template")
    try:
        await asyncio.to_thread(kit_datasets.write_dataset_info, workspace.data, specs)
        if template:
            await asyncio.to_thread(check_chat_template, workspace.base, template)
    except TemplateMismatch as error:
        raise OperationFailure(
            "template_mismatch", str(error), field="arguments.template"
        ) from error
    except InvalidArgument as error:
        raise OperationFailure("invalid_argument", str(error), field=error.field or "") from error
    workspace.save_validated(
        Validated(
            base_model=base.model,
            base_version=base.number,
            chat_template=_chat_template(workspace.base),
            datasets=records,
        )
    )


async def _fetch_dataset(
    client: RegistryClient, dataset: DatasetPlan, workspace: JobWorkspace
) -> tuple[DatasetRecord, DatasetSpec]:
    where = f"dataset '{dataset.name}'"
    target = workspace.sources / dataset.name
    paths = [dataset.source.path] if dataset.source.path else []
    try:
        version = await client.pull(_reference(dataset.source.version), target, paths=paths)
    except (grpc.RpcError, ForgelineError) as error:
        raise registry_failure(error, where) from error
    artifacts = [a for a in version.artifacts if not paths or a.path in paths]
    if len(artifacts) != 1:
        raise OperationFailure(
            "invalid_argument",
            f"{where}: {version.model}:{version.number} holds {len(artifacts)} files; name "
            "the one to train on in source.path",
            field="datasets.source.path",
        )
    artifact = artifacts[0]
    spec = DatasetSpec(
        name=dataset.name,
        path=target / artifact.path,
        format=dataset.format,
        ranking=dataset.ranking,
        columns=dataset.columns,
        tags=dataset.tags,
        num_samples=dataset.num_samples,
    )
    try:
        count = await asyncio.to_thread(validate_dataset, spec)
    except InvalidDataset as error:
        raise OperationFailure("invalid_dataset", str(error), field=error.field or "") from error
    prepare: Any = getattr(kit_datasets, "prepare_for_llamafactory", None)
    if prepare is not None:
        spec = await asyncio.to_thread(prepare, spec, workspace.sources / f"{dataset.name}-lf")
    record = DatasetRecord(
        name=dataset.name,
        model=version.model,
        version=version.number,
        sha256=artifact.sha256,
        format=str(dataset.format),
        record_count=count,
        evaluation=dataset.evaluation,
    )
    return record, spec


def _chat_template(model_dir: Path) -> str:
    """The tokenizer's own chat template (what the registered versions record)."""
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            return template
    jinja = model_dir / "chat_template.jinja"
    return jinja.read_text(encoding="utf-8") if jinja.is_file() else ""
