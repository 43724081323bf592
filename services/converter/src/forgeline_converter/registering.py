"""REGISTERING: every output of the tool work pushed to the registry as a child version (its
GGUF file type, lineage, labels, quality figure and metadata), or, when one push fails, the
versions this run already pushed deleted again, so a failed conversion leaves none behind.
"""

from __future__ import annotations

from forgeline_converter.llamacpp.gguf_info import GgufInfo
from forgeline_converter.run_context import RunContext, Steps, log, registry_failure
from forgeline_converter.worker_process import WorkerOutput, WorkerResult
from forgeline_kit.errors import ForgelineError
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.converter.v1 import converter_pb2 as pb
from forgeline_proto.registry.v1 import registry_pb2 as rpb
from forgeline_registry_client.client import RegistryClient

__all__ = ["register_outputs"]


def _file_type_name(info: GgufInfo, fallback: str) -> str:
    name = info.file_type_name or ""
    for prefix in ("MOSTLY_", "ALL_"):
        name = name.removeprefix(prefix)
    return name or fallback


def _metadata(info: GgufInfo, fallback: str) -> pb.GgufMetadata:
    return pb.GgufMetadata(
        architecture=info.architecture,
        tensor_count=info.tensor_count,
        context_length=info.context_length or 0,
        file_type=_file_type_name(info, fallback),
        has_chat_template=info.chat_template is not None,
        parameter_count=info.parameter_count,
    )


def _lineage(conversion: pb.Conversion, output: WorkerOutput, llamacpp_version: str) -> rpb.Lineage:
    spec = conversion.spec
    parents: list[rpb.Parent] = []
    if spec.HasField("adapter"):
        parents.append(
            rpb.Parent(version=spec.adapter.adapter, relation=rpb.RELATION_CONVERTED_FROM)
        )
        if spec.adapter.HasField("base_gguf"):
            parents.append(
                rpb.Parent(version=spec.adapter.base_gguf, relation=rpb.RELATION_ADAPTER_OF)
            )
    else:
        parents.append(rpb.Parent(version=spec.model.source, relation=rpb.RELATION_CONVERTED_FROM))
        imatrix = spec.model.imatrix
        which = imatrix.WhichOneof("source") if spec.model.HasField("imatrix") else None
        if which in ("imatrix", "calibration_text") and not output.adapter:
            ref = imatrix.imatrix if which == "imatrix" else imatrix.calibration_text
            parents.append(rpb.Parent(version=ref.version, relation=rpb.RELATION_CALIBRATED_WITH))
    metrics: dict[str, float] = {"size_bytes": float(output.size_bytes)}
    if output.perplexity is not None:
        metrics["perplexity"] = output.perplexity
    if output.reference_perplexity is not None:
        metrics["perplexity_reference"] = output.reference_perplexity
    if output.kl_divergence is not None:
        metrics["kl_divergence_mean"] = output.kl_divergence
    if output.same_top_token is not None:
        metrics["same_top_token_rate"] = output.same_top_token
    return rpb.Lineage(
        parents=parents,
        chat_template=output.info.chat_template or "",
        metrics=metrics,
        tool_versions={"llama.cpp": llamacpp_version},
        produced_by=f"converter/conversions/{conversion.id}",
    )


async def _push(
    registry: RegistryClient, output: WorkerOutput, begin_request: rpb.BeginVersionRequest
) -> rpb.Version:
    """Push ``output.directory`` as a version, its GGUF artifact carrying its file type (the
    registry guesses file types from file names, and ``model.gguf`` names none)."""
    plan, _ = await registry.plan(output.directory)
    for artifact in plan.artifacts:
        if artifact.path.endswith(".gguf"):
            artifact.gguf_file_type = output.file_type
    begin_request.artifacts.extend(plan.artifacts)
    begin = await registry.begin_version(begin_request)
    if begin.HasField("committed_version"):
        return begin.committed_version
    multipart = await registry.upload(begin, plan)
    return await registry.commit_version(
        rpb.CommitVersionRequest(upload_id=begin.upload_id, multipart_uploads=multipart)
    )


async def register_outputs(
    conversion: pb.Conversion,
    context: RunContext,
    result: WorkerResult,
    steps: Steps,
    evaluation_sha256: str,
) -> list[pb.ConvertedOutput]:
    spec = conversion.spec
    steps.enter(
        pb.CONVERSION_STATE_REGISTERING,
        bytes_total=sum(output.size_bytes for output in result.outputs),
    )
    source = spec.adapter.adapter if spec.HasField("adapter") else spec.model.source
    registered: list[pb.ConvertedOutput] = []
    try:
        for output in result.outputs:
            labels = dict(spec.output.labels)
            labels |= {"quantization": output.file_type.lower(), "file_type": output.file_type}
            description = spec.output.description or (
                f"{source.model}:{source.version} as GGUF {output.file_type}"
                f"{' adapter' if output.adapter else ''} (llama.cpp {result.llamacpp_version})"
            )
            version = await _push(
                context.registry,
                output,
                rpb.BeginVersionRequest(
                    model=spec.output.model,
                    create_model=True,
                    kind=rpb.VERSION_KIND_GGUF_ADAPTER if output.adapter else rpb.VERSION_KIND_GGUF,
                    lineage=_lineage(conversion, output, result.llamacpp_version),
                    labels=labels,
                    description=description,
                    request_id=f"{conversion.id}/{output.file_type}",
                    transfer=context.registry.transfer_options,
                ),
            )
            quality = None
            if output.kl_divergence is not None:
                quality = pb.QualityFigure(
                    metric=pb.QUALITY_METRIC_KL_DIVERGENCE,
                    value=output.kl_divergence,
                    evaluation_text_sha256=evaluation_sha256,
                    chunks=spec.verification.evaluation_chunks,
                )
            elif output.perplexity is not None and output.reference_perplexity is not None:
                quality = pb.QualityFigure(
                    metric=pb.QUALITY_METRIC_PERPLEXITY,
                    value=output.perplexity,
                    reference_value=output.reference_perplexity,
                    evaluation_text_sha256=evaluation_sha256,
                    chunks=spec.verification.evaluation_chunks,
                )
            registered.append(
                pb.ConvertedOutput(
                    version=common_pb2.VersionRef(model=version.model, version=version.number),
                    adapter=output.adapter,
                    file_type=output.file_type,
                    size_bytes=output.size_bytes,
                    sha256=output.sha256,
                    quality=quality,
                    metadata=_metadata(output.info, output.file_type),
                )
            )
    except BaseException as error:
        await _unregister(context, registered)
        if isinstance(error, ForgelineError):
            raise registry_failure(error, "registering the outputs") from error
        raise
    return registered


async def _unregister(context: RunContext, registered: list[pb.ConvertedOutput]) -> None:
    """Delete what this run registered before it failed (best effort: the registry may be the
    reason it failed)."""
    for output in registered:
        ref = output.version
        try:
            await context.registry.delete_version(
                rpb.DeleteVersionRequest(model=ref.model, version=ref.version, force=True)
            )
        except ForgelineError as error:
            log.warning("could not delete %s:%s after a failure: %s", ref.model, ref.version, error)
