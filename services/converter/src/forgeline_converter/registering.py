"""REGISTERING: every output of the tool work pushed to the registry as a child version (its
GGUF file type, lineage, labels, quality figure and metadata), or, when one push fails, the
versions this run already pushed deleted again, so a failed conversion leaves none behind.
"""

from __future__ import annotations

from forgeline_converter.conversions import (
    AdapterConversion,
    Conversion,
    ConversionState,
    ConvertedOutput,
    GgufMetadata,
    ModelConversion,
    QualityFigure,
    QualityMetric,
    VersionRef,
)
from forgeline_converter.llamacpp.gguf_info import GgufInfo
from forgeline_converter.registry_access import NewVersion, RegistryParent, Relation, VersionKind
from forgeline_converter.run_context import RunContext, Steps, log, registry_failure
from forgeline_converter.worker_process import WorkerOutput, WorkerResult
from forgeline_kit.errors import ForgelineError

__all__ = ["register_outputs"]


def _file_type_name(info: GgufInfo, fallback: str) -> str:
    name = info.file_type_name or ""
    for prefix in ("MOSTLY_", "ALL_"):
        name = name.removeprefix(prefix)
    return name or fallback


def _metadata(info: GgufInfo, fallback: str) -> GgufMetadata:
    return GgufMetadata(
        architecture=info.architecture,
        tensor_count=info.tensor_count,
        context_length=info.context_length or 0,
        file_type=_file_type_name(info, fallback),
        has_chat_template=info.chat_template is not None,
        parameter_count=info.parameter_count,
    )


def _parents(conversion: Conversion, output: WorkerOutput) -> tuple[RegistryParent, ...]:
    task = conversion.spec.task
    if isinstance(task, AdapterConversion):
        parents = [RegistryParent(task.adapter, Relation.CONVERTED_FROM)]
        if task.base_gguf is not None:
            parents.append(RegistryParent(task.base_gguf, Relation.ADAPTER_OF))
        return tuple(parents)
    assert isinstance(task, ModelConversion)  # an accepted spec names its task
    parents = [RegistryParent(task.source, Relation.CONVERTED_FROM)]
    imatrix = task.imatrix.registry_file if task.imatrix is not None else None
    if imatrix is not None and not output.adapter:
        parents.append(RegistryParent(imatrix.version, Relation.CALIBRATED_WITH))
    return tuple(parents)


def _new_version(
    conversion: Conversion, output: WorkerOutput, llamacpp_version: str, source: VersionRef
) -> NewVersion:
    spec = conversion.spec
    metrics: dict[str, float] = {"size_bytes": float(output.size_bytes)}
    if output.perplexity is not None:
        metrics["perplexity"] = output.perplexity
    if output.reference_perplexity is not None:
        metrics["perplexity_reference"] = output.reference_perplexity
    if output.kl_divergence is not None:
        metrics["kl_divergence_mean"] = output.kl_divergence
    if output.same_top_token is not None:
        metrics["same_top_token_rate"] = output.same_top_token
    labels = dict(spec.output.labels)
    labels |= {"quantization": output.file_type.lower(), "file_type": output.file_type}
    description = spec.output.description or (
        f"{source.model}:{source.version} as GGUF {output.file_type}"
        f"{' adapter' if output.adapter else ''} (llama.cpp {llamacpp_version})"
    )
    return NewVersion(
        model=spec.output.model,
        kind=VersionKind.GGUF_ADAPTER if output.adapter else VersionKind.GGUF,
        parents=_parents(conversion, output),
        request_id=f"{conversion.id}/{output.file_type}",
        gguf_file_type=output.file_type,
        chat_template=output.info.chat_template or "",
        metrics=metrics,
        tool_versions={"llama.cpp": llamacpp_version},
        produced_by=f"converter/conversions/{conversion.id}",
        labels=labels,
        description=description,
    )


def _quality(output: WorkerOutput, evaluation_sha256: str, chunks: int) -> QualityFigure | None:
    if output.kl_divergence is not None:
        return QualityFigure(
            metric=QualityMetric.KL_DIVERGENCE,
            value=output.kl_divergence,
            evaluation_text_sha256=evaluation_sha256,
            chunks=chunks,
        )
    if output.perplexity is not None and output.reference_perplexity is not None:
        return QualityFigure(
            metric=QualityMetric.PERPLEXITY,
            value=output.perplexity,
            reference_value=output.reference_perplexity,
            evaluation_text_sha256=evaluation_sha256,
            chunks=chunks,
        )
    return None


async def register_outputs(
    conversion: Conversion,
    context: RunContext,
    result: WorkerResult,
    steps: Steps,
    evaluation_sha256: str,
) -> list[ConvertedOutput]:
    """Register every output as a version of the output model, in order; what was registered.

    Raises:
        OperationFailure: the registry failed; the versions this run registered are deleted.
    """
    spec = conversion.spec
    steps.enter(
        ConversionState.REGISTERING,
        bytes_total=sum(output.size_bytes for output in result.outputs),
    )
    source = spec.source
    assert source is not None  # an accepted spec names its task
    registered: list[ConvertedOutput] = []
    try:
        for output in result.outputs:
            version = await context.registry.push(
                output.directory,
                _new_version(conversion, output, result.llamacpp_version, source),
            )
            registered.append(
                ConvertedOutput(
                    version=version,
                    adapter=output.adapter,
                    file_type=output.file_type,
                    size_bytes=output.size_bytes,
                    sha256=output.sha256,
                    quality=_quality(
                        output, evaluation_sha256, spec.verification.evaluation_chunks
                    ),
                    metadata=_metadata(output.info, output.file_type),
                )
            )
    except BaseException as error:
        await _unregister(context, registered)
        if isinstance(error, ForgelineError):
            raise registry_failure(error, "registering the outputs") from error
        raise
    return registered


async def _unregister(context: RunContext, registered: list[ConvertedOutput]) -> None:
    """Delete what this run registered before it failed (best effort: the registry may be the
    reason it failed)."""
    for output in registered:
        ref = output.version
        try:
            await context.registry.delete_version(ref)
        except ForgelineError as error:
            log.warning("could not delete %s:%s after a failure: %s", ref.model, ref.version, error)
