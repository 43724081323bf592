"""The converter's own types: what a conversion asks for (`ConversionSpec`), where it stands
(`Conversion`), what happens to it (`ConversionEvent` and its payloads) and what it registered
(`ConversionResult`).

They are plain Python. The gRPC servicer (`grpc_api`) and the store (`store`) translate them to
and from the contract's messages (``forgeline.converter.v1``) through `convert`; the registry's
messages stay in `registry_access`. No other module sees protobuf.

Enumerations carry their contract names as values (``CONVERSION_STATE_QUEUED``), which never
change within ``forgeline.converter.v1``, so a message naming one reads as the API does. What the
contract leaves unset (an UNSPECIFIED enum, an absent message) is None here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from forgeline_kit.operations import OperationFailure

__all__ = [
    "TERMINAL_STATES",
    "AdapterConversion",
    "ArtifactRef",
    "Conversion",
    "ConversionEvent",
    "ConversionPage",
    "ConversionResult",
    "ConversionSpec",
    "ConversionState",
    "ConvertedOutput",
    "EventPayload",
    "GgufMetadata",
    "GgufOuttype",
    "ImatrixOptions",
    "LogLine",
    "LogSource",
    "ModelConversion",
    "ModelfileOptions",
    "ModelfileParameter",
    "OperationError",
    "OutputOptions",
    "Progress",
    "QualityFigure",
    "QualityMetric",
    "QuantizationTarget",
    "QuantizationType",
    "QuantizationTypes",
    "Retry",
    "TensorTypeOverride",
    "VerificationOptions",
    "VersionRef",
]


# --- enumerations


class ConversionState(StrEnum):
    """Where a conversion stands; also the stage a progress event reports."""

    QUEUED = "CONVERSION_STATE_QUEUED"
    DOWNLOADING = "CONVERSION_STATE_DOWNLOADING"
    CONVERTING = "CONVERSION_STATE_CONVERTING"
    COMPUTING_IMATRIX = "CONVERSION_STATE_COMPUTING_IMATRIX"
    QUANTIZING = "CONVERSION_STATE_QUANTIZING"
    VERIFYING = "CONVERSION_STATE_VERIFYING"
    REGISTERING = "CONVERSION_STATE_REGISTERING"
    SUCCEEDED = "CONVERSION_STATE_SUCCEEDED"
    FAILED = "CONVERSION_STATE_FAILED"
    CANCELLING = "CONVERSION_STATE_CANCELLING"
    CANCELLED = "CONVERSION_STATE_CANCELLED"


TERMINAL_STATES = frozenset(
    {ConversionState.SUCCEEDED, ConversionState.FAILED, ConversionState.CANCELLED}
)


class GgufOuttype(StrEnum):
    """The file type ``convert_hf_to_gguf.py`` writes (``--outtype``)."""

    F32 = "GGUF_OUTTYPE_F32"
    F16 = "GGUF_OUTTYPE_F16"
    BF16 = "GGUF_OUTTYPE_BF16"
    Q8_0 = "GGUF_OUTTYPE_Q8_0"


class QualityMetric(StrEnum):
    """The quality figure measured for each quantized file."""

    PERPLEXITY = "QUALITY_METRIC_PERPLEXITY"
    KL_DIVERGENCE = "QUALITY_METRIC_KL_DIVERGENCE"
    NONE = "QUALITY_METRIC_NONE"


class LogSource(StrEnum):
    """Who wrote a log line: the service, or a tool on its standard output or error."""

    SERVICE = "LOG_SOURCE_SERVICE"
    STDOUT = "LOG_SOURCE_STDOUT"
    STDERR = "LOG_SOURCE_STDERR"


# --- registry references


@dataclass(frozen=True)
class VersionRef:
    """A registry version: by number, by alias, or (neither) the model's ``latest``."""

    model: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.model}:{self.version}"
        if self.alias is not None:
            return f"{self.model}@{self.alias}"
        return self.model


@dataclass(frozen=True)
class ArtifactRef:
    """One file of a registry version."""

    version: VersionRef
    path: str = ""


# --- what a conversion asks for


@dataclass(frozen=True)
class TensorTypeOverride:
    """``--tensor-type PATTERN=TYPE``: the type of the tensors whose names match."""

    pattern: str
    type: str


@dataclass(frozen=True)
class QuantizationTarget:
    """One llama-quantize output and its options."""

    type: str
    output_tensor_type: str = ""
    token_embedding_type: str = ""
    leave_output_tensor: bool = False
    pure: bool = False
    tensor_types: tuple[TensorTypeOverride, ...] = ()


@dataclass(frozen=True)
class ImatrixOptions:
    """The importance matrix: at most one source is set (none is an error the validation
    reports); ``chunks`` and ``context_size`` apply when it is computed from a text."""

    imatrix: ArtifactRef | None = None
    calibration_text: ArtifactRef | None = None
    calibration_text_inline: str | None = None
    chunks: int = 0
    context_size: int = 0

    @property
    def source(self) -> str | None:
        """The contract's name of the source that is set (``imatrix``, ``calibration_text``,
        ``calibration_text_inline``), as request field paths spell it; None when none is."""
        if self.imatrix is not None:
            return "imatrix"
        if self.calibration_text is not None:
            return "calibration_text"
        if self.calibration_text_inline is not None:
            return "calibration_text_inline"
        return None

    @property
    def registry_file(self) -> ArtifactRef | None:
        """The file in the registry it is read or computed from, if any."""
        return self.imatrix or self.calibration_text


@dataclass(frozen=True)
class ModelfileParameter:
    """One PARAMETER line as asked for (checked by the validation, not here)."""

    name: str
    value: str


@dataclass(frozen=True)
class ModelfileOptions:
    """The Ollama Modelfile registered with each GGUF model file."""

    skip: bool = False
    system: str = ""
    parameters: tuple[ModelfileParameter, ...] = ()
    template_override: str = ""


@dataclass(frozen=True)
class ModelConversion:
    """An HF model (or a full-precision GGUF) to GGUF, then quantized to each target."""

    source: VersionRef
    outtype: GgufOuttype | None = None
    register_outtype: bool = False
    quantizations: tuple[QuantizationTarget, ...] = ()
    allow_requantize: bool = False
    imatrix: ImatrixOptions | None = None
    modelfile: ModelfileOptions = ModelfileOptions()


@dataclass(frozen=True)
class AdapterConversion:
    """A PEFT LoRA adapter to a GGUF adapter; ``base_gguf`` is what the smoke test loads it on."""

    adapter: VersionRef
    base: VersionRef | None = None
    outtype: GgufOuttype | None = None
    base_gguf: VersionRef | None = None


@dataclass(frozen=True)
class OutputOptions:
    """Where and how the outputs are registered."""

    model: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class VerificationOptions:
    """The checks run on every output before it is registered."""

    skip_smoke_test: bool = False
    smoke_prompt: str = ""
    quality_metric: QualityMetric | None = None
    evaluation_text: ArtifactRef | None = None
    evaluation_chunks: int = 0


@dataclass(frozen=True)
class ConversionSpec:
    """Everything that defines a conversion. As submitted ``task`` may be None (the validation
    refuses that); an accepted conversion's spec has its defaults filled in."""

    task: ModelConversion | AdapterConversion | None = None
    output: OutputOptions = OutputOptions()
    verification: VerificationOptions = VerificationOptions()

    @property
    def source(self) -> VersionRef | None:
        """The version the conversion reads: the model's source, or the adapter."""
        if isinstance(self.task, AdapterConversion):
            return self.task.adapter
        if isinstance(self.task, ModelConversion):
            return self.task.source
        return None


# --- what it made


@dataclass(frozen=True)
class GgufMetadata:
    """GGUF metadata read back from an output file."""

    architecture: str = ""
    tensor_count: int = 0
    context_length: int = 0
    file_type: str = ""
    has_chat_template: bool = False
    parameter_count: int = 0


@dataclass(frozen=True)
class QualityFigure:
    """A quantized file's quality figure; ``reference_value`` is the intermediate's
    (perplexity only)."""

    metric: QualityMetric
    value: float
    reference_value: float | None = None
    evaluation_text_sha256: str = ""
    chunks: int = 0


@dataclass(frozen=True)
class ConvertedOutput:
    """One registered output."""

    version: VersionRef
    adapter: bool
    file_type: str
    size_bytes: int
    sha256: str
    metadata: GgufMetadata = GgufMetadata()
    quality: QualityFigure | None = None


@dataclass(frozen=True)
class ConversionResult:
    """What a successful conversion registered; ``timings`` in seconds, by step."""

    outputs: tuple[ConvertedOutput, ...]
    llama_cpp_version: str
    timings: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class OperationError:
    """Why a conversion failed, as its record keeps it (the kit's `OperationFailure` is what a
    stage raises)."""

    code: str
    message: str
    field: str = ""
    retryable: bool = False

    @classmethod
    def of(cls, failure: OperationFailure) -> OperationError:
        """The error a stage's failure records."""
        return cls(failure.code, failure.message, failure.field, failure.retryable)


# --- where it stands


@dataclass
class Conversion:
    """One conversion: its request, where it stands and how it ended.

    Not frozen: the operations store stamps the record it writes with its newest event's
    sequence in place (``OperationCodec.number_record``), and the service changes the one live
    record of a running conversion as it goes. Everything it holds is immutable.
    """

    id: str
    request_id: str
    spec: ConversionSpec
    state: ConversionState
    create_time: datetime
    percent: float = 0.0
    result: ConversionResult | None = None
    error: OperationError | None = None
    failed_state: ConversionState | None = None
    last_event_sequence: int = 0
    start_time: datetime | None = None
    end_time: datetime | None = None

    @property
    def terminal(self) -> bool:
        """It ended: SUCCEEDED, FAILED or CANCELLED."""
        return self.state in TERMINAL_STATES


# --- what happens to it


@dataclass(frozen=True)
class Progress:
    """The conversion entered ``stage`` (or moved on within it)."""

    stage: ConversionState
    percent: float
    target: str = ""
    bytes_done: int = 0
    bytes_total: int = 0


@dataclass(frozen=True)
class LogLine:
    """A log line of the service or of a tool."""

    source: LogSource
    text: str


@dataclass(frozen=True)
class Retry:
    """The tool work failed for a reason not the input's and runs again after ``delay_seconds``
    (``attempt`` is the one about to start)."""

    error: OperationError
    attempt: int
    max_attempts: int
    delay_seconds: float


#: What an event says: the conversion accepted (its record then), progress, a log line, the
#: result (the last event of a success), the error (of a failure), or a retry.
EventPayload = Conversion | Progress | LogLine | ConversionResult | OperationError | Retry


@dataclass(frozen=True)
class ConversionEvent:
    """Something that happened to a conversion; ``sequence`` is given when it is stored."""

    conversion_id: str
    time: datetime
    payload: EventPayload
    sequence: int = 0


# --- answers


@dataclass(frozen=True)
class ConversionPage:
    """A page of conversions, newest first; ``next_page_token`` empty on the last."""

    conversions: list[Conversion]
    next_page_token: str


@dataclass(frozen=True)
class QuantizationType:
    """A quantization type llama-quantize offers."""

    name: str
    description: str
    requires_imatrix: bool


@dataclass(frozen=True)
class QuantizationTypes:
    """Every type llama-quantize offers, in its order, and the llama.cpp version."""

    types: tuple[QuantizationType, ...]
    llama_cpp_version: str
