"""Translations between the converter's contract (``forgeline.converter.v1`` and the shared
``forgeline.common.v1`` messages) and its own types (`conversions`).

Two edges use them: the gRPC servicer (requests in, answers out) and the store (a conversion and
its events are kept as their serialized messages, the encoding every earlier release wrote, so
databases written before keep loading). An enum number this build does not know, or an
UNSPECIFIED where a value is needed, is INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf import duration_pb2, timestamp_pb2

from forgeline_converter.conversions import (
    AdapterConversion,
    ArtifactRef,
    Conversion,
    ConversionEvent,
    ConversionPage,
    ConversionResult,
    ConversionSpec,
    ConversionState,
    ConvertedOutput,
    EventPayload,
    GgufMetadata,
    GgufOuttype,
    ImatrixOptions,
    LogLine,
    LogSource,
    ModelConversion,
    ModelfileOptions,
    ModelfileParameter,
    OperationError,
    OutputOptions,
    Progress,
    QualityFigure,
    QualityMetric,
    QuantizationTarget,
    QuantizationTypes,
    Retry,
    TensorTypeOverride,
    VerificationOptions,
    VersionRef,
)
from forgeline_kit.errors import InvalidArgument
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.converter.v1 import converter_pb2 as pb

if TYPE_CHECKING:
    from _typeshed import DataclassInstance
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

__all__ = [
    "artifact_ref_from_pb",
    "artifact_ref_to_pb",
    "conversion_from_pb",
    "conversion_to_pb",
    "event_from_pb",
    "event_to_pb",
    "page_to_pb",
    "payload_field",
    "quantization_types_to_pb",
    "spec_from_pb",
    "spec_to_pb",
    "state_from_pb",
    "version_ref_from_pb",
    "version_ref_to_pb",
]

_V = TypeVar("_V", bound=int)
_E = TypeVar("_E", bound=StrEnum)
_D = TypeVar("_D", bound="DataclassInstance")
_M = TypeVar("_M")


# Most of the converter's types name their fields as the contract does: these copy the fields
# that are the same on both sides, and take the others (enums, references, nested messages)
# translated by the caller.


def _from_pb(cls: type[_D], message: Any, **translated: Any) -> _D:
    copied = {f.name: getattr(message, f.name) for f in fields(cls) if f.name not in translated}
    return cls(**copied, **translated)


def _to_pb(cls: type[_M], value: DataclassInstance, **translated: Any) -> _M:
    copied = {f.name: getattr(value, f.name) for f in fields(value) if f.name not in translated}
    return cls(**copied, **translated)


# --- scalars


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _moment(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    # Rounded, so a stored duration read back (nanoseconds / 1e9) encodes to what it was.
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def _enum_to_pb(wrapper: _EnumTypeWrapper[_V], member: StrEnum | None) -> _V:
    # The domain's values are the contract's names; None is the contract's UNSPECIFIED (0).
    name = wrapper.DESCRIPTOR.values_by_number[0].name if member is None else member.value
    return wrapper.Value(name)


def _enum_from_pb(
    domain: type[_E], wrapper: _EnumTypeWrapper[_V], value: _V, field: str
) -> _E | None:
    if value == 0:
        return None
    try:
        return domain(wrapper.Name(value))
    except ValueError:
        raise InvalidArgument(f"{field} has the unknown value {value}", field=field) from None


def _required_enum(domain: type[_E], wrapper: _EnumTypeWrapper[_V], value: _V, field: str) -> _E:
    member = _enum_from_pb(domain, wrapper, value, field)
    if member is None:
        raise InvalidArgument(f"{field} is not set", field=field)
    return member


def state_from_pb(value: pb.ConversionState.ValueType, field: str) -> ConversionState:
    """A conversion state; INVALID_ARGUMENT for UNSPECIFIED or a number this build lacks."""
    return _required_enum(ConversionState, pb.ConversionState, value, field)


# --- references


def version_ref_from_pb(ref: common_pb2.VersionRef) -> VersionRef:
    """A version reference, its selector kept as given."""
    selector = ref.WhichOneof("selector")
    return VersionRef(
        model=ref.model,
        version=ref.version if selector == "version" else None,
        alias=ref.alias if selector == "alias" else None,
    )


def version_ref_to_pb(ref: VersionRef) -> common_pb2.VersionRef:
    """The contract's reference."""
    message = common_pb2.VersionRef(model=ref.model)
    if ref.version is not None:
        message.version = ref.version
    elif ref.alias is not None:
        message.alias = ref.alias
    return message


def artifact_ref_from_pb(ref: common_pb2.ArtifactRef) -> ArtifactRef:
    """An artifact reference."""
    return ArtifactRef(version=version_ref_from_pb(ref.version), path=ref.path)


def artifact_ref_to_pb(ref: ArtifactRef) -> common_pb2.ArtifactRef:
    """The contract's artifact reference."""
    return common_pb2.ArtifactRef(version=version_ref_to_pb(ref.version), path=ref.path)


# --- the spec


def _target_from_pb(target: pb.QuantizationTarget) -> QuantizationTarget:
    return _from_pb(
        QuantizationTarget,
        target,
        tensor_types=tuple(_from_pb(TensorTypeOverride, o) for o in target.tensor_types),
    )


def _target_to_pb(target: QuantizationTarget) -> pb.QuantizationTarget:
    return _to_pb(
        pb.QuantizationTarget,
        target,
        tensor_types=[_to_pb(pb.TensorTypeOverride, o) for o in target.tensor_types],
    )


def _imatrix_from_pb(options: pb.ImatrixOptions) -> ImatrixOptions:
    which = options.WhichOneof("source")
    return ImatrixOptions(
        imatrix=artifact_ref_from_pb(options.imatrix) if which == "imatrix" else None,
        calibration_text=(
            artifact_ref_from_pb(options.calibration_text) if which == "calibration_text" else None
        ),
        calibration_text_inline=(
            options.calibration_text_inline if which == "calibration_text_inline" else None
        ),
        chunks=options.chunks,
        context_size=options.context_size,
    )


def _imatrix_to_pb(options: ImatrixOptions) -> pb.ImatrixOptions:
    message = pb.ImatrixOptions(chunks=options.chunks, context_size=options.context_size)
    if options.imatrix is not None:
        message.imatrix.CopyFrom(artifact_ref_to_pb(options.imatrix))
    elif options.calibration_text is not None:
        message.calibration_text.CopyFrom(artifact_ref_to_pb(options.calibration_text))
    elif options.calibration_text_inline is not None:
        message.calibration_text_inline = options.calibration_text_inline
    return message


def _modelfile_from_pb(options: pb.ModelfileOptions) -> ModelfileOptions:
    return _from_pb(
        ModelfileOptions,
        options,
        parameters=tuple(_from_pb(ModelfileParameter, p) for p in options.parameters),
    )


def _modelfile_to_pb(options: ModelfileOptions) -> pb.ModelfileOptions:
    return _to_pb(
        pb.ModelfileOptions,
        options,
        parameters=[_to_pb(pb.ModelfileParameter, p) for p in options.parameters],
    )


def _model_from_pb(task: pb.ModelConversion) -> ModelConversion:
    return ModelConversion(
        source=version_ref_from_pb(task.source),
        outtype=_enum_from_pb(GgufOuttype, pb.GgufOuttype, task.outtype, "spec.model.outtype"),
        register_outtype=task.register_outtype,
        quantizations=tuple(_target_from_pb(t) for t in task.quantizations),
        allow_requantize=task.allow_requantize,
        imatrix=_imatrix_from_pb(task.imatrix) if task.HasField("imatrix") else None,
        modelfile=_modelfile_from_pb(task.modelfile),
    )


def _model_to_pb(task: ModelConversion) -> pb.ModelConversion:
    message = pb.ModelConversion(
        source=version_ref_to_pb(task.source),
        outtype=_enum_to_pb(pb.GgufOuttype, task.outtype),
        register_outtype=task.register_outtype,
        quantizations=[_target_to_pb(t) for t in task.quantizations],
        allow_requantize=task.allow_requantize,
    )
    if task.imatrix is not None:
        message.imatrix.CopyFrom(_imatrix_to_pb(task.imatrix))
    # Absent when default, as a request without modelfile options left it.
    if task.modelfile != ModelfileOptions():
        message.modelfile.CopyFrom(_modelfile_to_pb(task.modelfile))
    return message


def _optional_ref(message: common_pb2.VersionRef, present: bool) -> VersionRef | None:
    return version_ref_from_pb(message) if present else None


def _adapter_from_pb(task: pb.AdapterConversion) -> AdapterConversion:
    return AdapterConversion(
        adapter=version_ref_from_pb(task.adapter),
        base=_optional_ref(task.base, task.HasField("base")),
        outtype=_enum_from_pb(GgufOuttype, pb.GgufOuttype, task.outtype, "spec.adapter.outtype"),
        base_gguf=_optional_ref(task.base_gguf, task.HasField("base_gguf")),
    )


def _adapter_to_pb(task: AdapterConversion) -> pb.AdapterConversion:
    message = pb.AdapterConversion(
        adapter=version_ref_to_pb(task.adapter), outtype=_enum_to_pb(pb.GgufOuttype, task.outtype)
    )
    if task.base is not None:
        message.base.CopyFrom(version_ref_to_pb(task.base))
    if task.base_gguf is not None:
        message.base_gguf.CopyFrom(version_ref_to_pb(task.base_gguf))
    return message


def spec_from_pb(spec: pb.ConversionSpec) -> ConversionSpec:
    """A conversion spec as submitted (or stored).

    Raises:
        InvalidArgument: an enum holds a number this build does not know.
    """
    task = spec.WhichOneof("task")
    verification = spec.verification
    return ConversionSpec(
        task=(
            _model_from_pb(spec.model)
            if task == "model"
            else _adapter_from_pb(spec.adapter)
            if task == "adapter"
            else None
        ),
        output=_from_pb(OutputOptions, spec.output, labels=dict(spec.output.labels)),
        verification=_from_pb(
            VerificationOptions,
            verification,
            quality_metric=_enum_from_pb(
                QualityMetric,
                pb.QualityMetric,
                verification.quality_metric,
                "spec.verification.quality_metric",
            ),
            evaluation_text=(
                artifact_ref_from_pb(verification.evaluation_text)
                if verification.HasField("evaluation_text")
                else None
            ),
        ),
    )


def spec_to_pb(spec: ConversionSpec) -> pb.ConversionSpec:
    """The contract's spec."""
    message = pb.ConversionSpec()
    if isinstance(spec.task, ModelConversion):
        message.model.CopyFrom(_model_to_pb(spec.task))
    elif isinstance(spec.task, AdapterConversion):
        message.adapter.CopyFrom(_adapter_to_pb(spec.task))
    # Absent when default, as a request without them left them.
    if spec.output != OutputOptions():
        message.output.CopyFrom(_to_pb(pb.OutputOptions, spec.output))
    verification = spec.verification
    if verification != VerificationOptions():
        evaluation_text = verification.evaluation_text
        message.verification.CopyFrom(
            _to_pb(
                pb.VerificationOptions,
                verification,
                quality_metric=_enum_to_pb(pb.QualityMetric, verification.quality_metric),
                evaluation_text=artifact_ref_to_pb(evaluation_text) if evaluation_text else None,
            )
        )
    return message


# --- results and errors


def _quality_from_pb(quality: pb.QualityFigure) -> QualityFigure:
    return _from_pb(
        QualityFigure,
        quality,
        metric=_required_enum(QualityMetric, pb.QualityMetric, quality.metric, "quality.metric"),
        reference_value=quality.reference_value if quality.HasField("reference_value") else None,
    )


def _output_from_pb(output: pb.ConvertedOutput) -> ConvertedOutput:
    return _from_pb(
        ConvertedOutput,
        output,
        version=version_ref_from_pb(output.version),
        metadata=_from_pb(GgufMetadata, output.metadata),
        quality=_quality_from_pb(output.quality) if output.HasField("quality") else None,
    )


def _output_to_pb(output: ConvertedOutput) -> pb.ConvertedOutput:
    quality = output.quality
    return _to_pb(
        pb.ConvertedOutput,
        output,
        version=version_ref_to_pb(output.version),
        metadata=_to_pb(pb.GgufMetadata, output.metadata),
        quality=(
            _to_pb(pb.QualityFigure, quality, metric=_enum_to_pb(pb.QualityMetric, quality.metric))
            if quality is not None
            else None
        ),
    )


def _result_from_pb(result: pb.ConversionResult) -> ConversionResult:
    return ConversionResult(
        outputs=tuple(_output_from_pb(o) for o in result.outputs),
        llama_cpp_version=result.llama_cpp_version,
        timings={name: d.ToNanoseconds() / 1e9 for name, d in result.timings.items()},
    )


def _result_to_pb(result: ConversionResult) -> pb.ConversionResult:
    return pb.ConversionResult(
        outputs=[_output_to_pb(o) for o in result.outputs],
        llama_cpp_version=result.llama_cpp_version,
        timings={name: _duration(seconds) for name, seconds in result.timings.items()},
    )


def _error_from_pb(error: common_pb2.OperationError) -> OperationError:
    return _from_pb(OperationError, error)


def _error_to_pb(error: OperationError) -> common_pb2.OperationError:
    return _to_pb(common_pb2.OperationError, error)


# --- the record


def conversion_from_pb(conversion: pb.Conversion) -> Conversion:
    """A conversion record (as stored, or as the API showed it)."""
    return Conversion(
        id=conversion.id,
        request_id=conversion.request_id,
        spec=spec_from_pb(conversion.spec),
        state=state_from_pb(conversion.state, "state"),
        create_time=_moment(conversion.create_time),
        percent=conversion.percent,
        result=_result_from_pb(conversion.result) if conversion.HasField("result") else None,
        error=_error_from_pb(conversion.error) if conversion.HasField("error") else None,
        failed_state=_enum_from_pb(
            ConversionState, pb.ConversionState, conversion.failed_state, "failed_state"
        ),
        last_event_sequence=conversion.last_event_sequence,
        start_time=(_moment(conversion.start_time) if conversion.HasField("start_time") else None),
        end_time=_moment(conversion.end_time) if conversion.HasField("end_time") else None,
    )


def conversion_to_pb(conversion: Conversion) -> pb.Conversion:
    """A conversion as the API shows it (and the store keeps it)."""
    message = pb.Conversion(
        id=conversion.id,
        request_id=conversion.request_id,
        spec=spec_to_pb(conversion.spec),
        state=_enum_to_pb(pb.ConversionState, conversion.state),
        percent=conversion.percent,
        failed_state=_enum_to_pb(pb.ConversionState, conversion.failed_state),
        last_event_sequence=conversion.last_event_sequence,
        create_time=_timestamp(conversion.create_time),
    )
    if conversion.result is not None:
        message.result.CopyFrom(_result_to_pb(conversion.result))
    if conversion.error is not None:
        message.error.CopyFrom(_error_to_pb(conversion.error))
    if conversion.start_time is not None:
        message.start_time.CopyFrom(_timestamp(conversion.start_time))
    if conversion.end_time is not None:
        message.end_time.CopyFrom(_timestamp(conversion.end_time))
    return message


# --- events

#: The contract's name of each payload (``ConversionEvent.payload``); the store files events
#: under it, so it must stay what earlier releases wrote.
_PAYLOAD_FIELDS: Mapping[type, str] = {
    Conversion: "accepted",
    Progress: "progress",
    LogLine: "log",
    ConversionResult: "result",
    OperationError: "error",
    Retry: "retry",
}


def payload_field(payload: EventPayload) -> str:
    """The contract's name of an event's payload: ``accepted``, ``progress``, ``log``..."""
    return _PAYLOAD_FIELDS[type(payload)]


def _payload_from_pb(event: pb.ConversionEvent) -> EventPayload:
    which = event.WhichOneof("payload")
    if which == "accepted":
        return conversion_from_pb(event.accepted)
    if which == "progress":
        progress = event.progress
        return _from_pb(Progress, progress, stage=state_from_pb(progress.stage, "progress.stage"))
    if which == "log":
        return LogLine(
            # The contract reads an unset source as the service's.
            source=_enum_from_pb(LogSource, common_pb2.LogSource, event.log.source, "log.source")
            or LogSource.SERVICE,
            text=event.log.text,
        )
    if which == "result":
        return _result_from_pb(event.result)
    if which == "error":
        return _error_from_pb(event.error)
    if which == "retry":
        retry = event.retry
        return Retry(
            error=_error_from_pb(retry.error),
            attempt=retry.attempt,
            max_attempts=retry.max_attempts,
            delay_seconds=retry.delay.ToNanoseconds() / 1e9,
        )
    raise ValueError(f"event {event.sequence} of {event.conversion_id} carries no payload")


def event_from_pb(event: pb.ConversionEvent) -> ConversionEvent:
    """A stored event.

    Raises:
        ValueError: it carries no payload (the converter never wrote one).
    """
    return ConversionEvent(
        conversion_id=event.conversion_id,
        time=_moment(event.time),
        payload=_payload_from_pb(event),
        sequence=event.sequence,
    )


def event_to_pb(event: ConversionEvent) -> pb.ConversionEvent:
    """An event as the API streams it (and the store keeps it)."""
    message = pb.ConversionEvent(
        conversion_id=event.conversion_id, sequence=event.sequence, time=_timestamp(event.time)
    )
    payload = event.payload
    if isinstance(payload, Conversion):
        message.accepted.CopyFrom(conversion_to_pb(payload))
    elif isinstance(payload, Progress):
        message.progress.CopyFrom(
            _to_pb(pb.Progress, payload, stage=_enum_to_pb(pb.ConversionState, payload.stage))
        )
    elif isinstance(payload, LogLine):
        message.log.CopyFrom(
            common_pb2.LogLine(
                source=_enum_to_pb(common_pb2.LogSource, payload.source), text=payload.text
            )
        )
    elif isinstance(payload, ConversionResult):
        message.result.CopyFrom(_result_to_pb(payload))
    elif isinstance(payload, OperationError):
        message.error.CopyFrom(_error_to_pb(payload))
    else:
        message.retry.CopyFrom(
            common_pb2.Retry(
                error=_error_to_pb(payload.error),
                attempt=payload.attempt,
                max_attempts=payload.max_attempts,
                delay=_duration(payload.delay_seconds),
            )
        )
    return message


# --- answers


def page_to_pb(page: ConversionPage) -> pb.ListConversionsResponse:
    """A page of conversions as ListConversions answers it."""
    return pb.ListConversionsResponse(
        conversions=[conversion_to_pb(c) for c in page.conversions],
        next_page_token=page.next_page_token,
    )


def quantization_types_to_pb(types: QuantizationTypes) -> pb.ListQuantizationTypesResponse:
    """The quantization types as ListQuantizationTypes answers them."""
    return pb.ListQuantizationTypesResponse(
        types=[_to_pb(pb.QuantizationType, t) for t in types.types],
        llama_cpp_version=types.llama_cpp_version,
    )
