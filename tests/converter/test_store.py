"""The converter's store: conversions kept by an earlier release survive the upgrade to the
operations layer, with their events and their place in listings; records written as protobuf
messages by the releases before the converter had its own types load into those types, and
encode back to the same messages."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

from google.protobuf import duration_pb2, timestamp_pb2
from postgres_server import PostgresServer

from forgeline_converter.conversions import (
    AdapterConversion,
    ArtifactRef,
    Conversion,
    ConversionEvent,
    ConversionResult,
    ConversionSpec,
    ConversionState,
    ConvertedOutput,
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
    Retry,
    TensorTypeOverride,
    VerificationOptions,
    VersionRef,
)
from forgeline_converter.convert import conversion_to_pb, event_to_pb
from forgeline_converter.store import open_store
from forgeline_kit.databases import connect
from forgeline_kit.operations import RecordInfo
from forgeline_kit.operations.databases import operation_store
from forgeline_kit.sqlite import sqlite_url
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.converter.v1 import converter_pb2 as pb

#: The layout the converter kept conversions in before the operations layer.
EARLIER_SCHEMA = """
CREATE TABLE conversions (
    id TEXT PRIMARY KEY, request_id TEXT NOT NULL UNIQUE, created REAL NOT NULL,
    state INTEGER NOT NULL, source_model TEXT NOT NULL, source_version INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE events (
    conversion_id TEXT NOT NULL, sequence INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (conversion_id, sequence)
);
"""


def _stored_conversion(number: int, state: pb.ConversionState.ValueType) -> pb.Conversion:
    """A conversion as earlier releases stored it."""
    conversion = pb.Conversion(
        id=f"cv-{number}",
        request_id=f"req-{number}",
        state=state,
        last_event_sequence=2,
        spec=pb.ConversionSpec(
            model=pb.ModelConversion(
                source=common_pb2.VersionRef(model="acme/base", version=number)
            )
        ),
    )
    conversion.create_time.FromSeconds(1_700_000_000 + number)
    return conversion


def _conversion(number: int, state: ConversionState) -> Conversion:
    """The same conversion in the converter's types."""
    return Conversion(
        id=f"cv-{number}",
        request_id=f"req-{number}",
        state=state,
        last_event_sequence=2,
        spec=ConversionSpec(
            task=ModelConversion(source=VersionRef(model="acme/base", version=number))
        ),
        create_time=datetime.fromtimestamp(1_700_000_000 + number, UTC),
    )


def test_conversions_kept_in_the_earlier_layout_are_adopted(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.executescript(EARLIER_SCHEMA)
    for number, state in ((1, pb.CONVERSION_STATE_SUCCEEDED), (2, pb.CONVERSION_STATE_QUANTIZING)):
        conversion = _stored_conversion(number, state)
        db.execute(
            "INSERT INTO conversions VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                conversion.id,
                conversion.request_id,
                1_700_000_000 + number,
                state,
                "acme/base",
                number,
                conversion.SerializeToString(),
            ),
        )
        for sequence, text in ((1, "accepted"), (2, "working")):
            event = pb.ConversionEvent(
                conversion_id=conversion.id,
                sequence=sequence,
                log=common_pb2.LogLine(text=text),
            )
            db.execute(
                "INSERT INTO events VALUES (?, ?, ?)",
                (conversion.id, sequence, event.SerializeToString()),
            )
    db.commit()
    db.close()

    store = open_store(sqlite_url(path))
    assert store.find_request("req-1") == _conversion(1, ConversionState.SUCCEEDED)
    # An unset source reads as the service's, as the contract says.
    assert [e.payload for e in store.events("cv-2")] == [
        LogLine(source=LogSource.SERVICE, text="accepted"),
        LogLine(source=LogSource.SERVICE, text="working"),
    ]
    assert [c.id for c in store.page().records] == ["cv-2", "cv-1"]
    assert [c.id for c in store.page(labels={"source_version": "1"}).records] == ["cv-1"]
    assert [c.id for c in store.unfinished()] == ["cv-2"]
    running = store.get("cv-2")
    assert running is not None
    store.record(
        running,
        ConversionEvent(
            conversion_id="cv-2",
            time=datetime.now(UTC),
            payload=Progress(stage=ConversionState.QUANTIZING, percent=50),
        ),
    )
    assert running.last_event_sequence == 3
    store.close()

    # Opened again, nothing is adopted twice and the earlier tables are gone.
    store = open_store(sqlite_url(path))
    assert len(store.events("cv-2")) == 3
    with closing(sqlite3.connect(path)) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "conversions" not in tables


def test_conversions_keep_on_postgresql(postgres: PostgresServer) -> None:
    url = postgres.create_database()
    store = open_store(url)
    now = datetime(2026, 1, 2, 3, 4, 5, 678901, UTC)
    first = _conversion(1, ConversionState.QUEUED)
    conversion, created = store.create(
        first, ConversionEvent(conversion_id="cv-1", time=now, payload=first)
    )
    assert created
    store.record(
        conversion,
        ConversionEvent(
            conversion_id="cv-1",
            time=now,
            payload=Progress(stage=ConversionState.DOWNLOADING, percent=1.5, bytes_total=10),
        ),
    )
    store.close()

    reopened = open_store(url)
    assert reopened.get("cv-1") == conversion
    events = reopened.events("cv-1")
    assert [e.sequence for e in events] == [1, 2]
    assert events[1] == ConversionEvent(
        conversion_id="cv-1",
        time=now,
        sequence=2,
        payload=Progress(stage=ConversionState.DOWNLOADING, percent=1.5, bytes_total=10),
    )
    assert [c.id for c in reopened.page(labels={"source_model": "acme/base"}).records] == ["cv-1"]
    assert [c.id for c in reopened.unfinished()] == ["cv-1"]
    reopened.close()


# --- records written by the releases that stored the contract's messages directly


class _MessageCodec:
    """The codec of the releases before the converter had its own types: protobuf messages in
    and out (what wrote the databases in use)."""

    kind = "conversion"

    def describe(self, record: pb.Conversion) -> RecordInfo:
        spec = record.spec
        ref = spec.adapter.adapter if spec.HasField("adapter") else spec.model.source
        return RecordInfo(
            id=record.id,
            request_id=record.request_id,
            created=record.create_time.ToNanoseconds() / 1e9,
            state=pb.ConversionState.Name(record.state).removeprefix("CONVERSION_STATE_"),
            terminal=record.state
            in (
                pb.CONVERSION_STATE_SUCCEEDED,
                pb.CONVERSION_STATE_FAILED,
                pb.CONVERSION_STATE_CANCELLED,
            ),
            labels={"source_model": ref.model, "source_version": str(ref.version)},
        )

    def dump_record(self, record: pb.Conversion) -> bytes:
        return record.SerializeToString()

    def load_record(self, data: bytes) -> pb.Conversion:
        return pb.Conversion.FromString(data)

    def dump_event(self, event: pb.ConversionEvent) -> bytes:
        return event.SerializeToString()

    def load_event(self, data: bytes) -> pb.ConversionEvent:
        return pb.ConversionEvent.FromString(data)

    def event_kind(self, event: pb.ConversionEvent) -> str:
        return event.WhichOneof("payload") or ""

    def number_event(self, event: pb.ConversionEvent, sequence: int) -> pb.ConversionEvent:
        event.sequence = sequence
        return event

    def number_record(self, record: pb.Conversion, sequence: int) -> None:
        record.last_event_sequence = sequence


CREATED = datetime(2026, 3, 1, 12, 0, 0, 250000, UTC)
STARTED = datetime(2026, 3, 1, 12, 0, 1, tzinfo=UTC)
ENDED = datetime(2026, 3, 1, 12, 5, 0, tzinfo=UTC)


def _stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _model_spec_message() -> pb.ConversionSpec:
    return pb.ConversionSpec(
        model=pb.ModelConversion(
            source=common_pb2.VersionRef(model="acme/base", version=4),
            outtype=pb.GGUF_OUTTYPE_BF16,
            register_outtype=True,
            quantizations=[
                pb.QuantizationTarget(
                    type="Q4_K_M",
                    output_tensor_type="Q8_0",
                    pure=True,
                    tensor_types=[pb.TensorTypeOverride(pattern="attn_v", type="Q6_K")],
                )
            ],
            imatrix=pb.ImatrixOptions(
                calibration_text=common_pb2.ArtifactRef(
                    version=common_pb2.VersionRef(model="acme/texts", version=2), path="cal.txt"
                ),
                chunks=8,
            ),
            modelfile=pb.ModelfileOptions(
                system="be brief",
                parameters=[pb.ModelfileParameter(name="temperature", value="0.7")],
            ),
        ),
        output=pb.OutputOptions(
            model="acme/base-gguf", labels={"team": "ml"}, description="nightly"
        ),
        verification=pb.VerificationOptions(
            smoke_prompt="Hello",
            quality_metric=pb.QUALITY_METRIC_PERPLEXITY,
            evaluation_text=common_pb2.ArtifactRef(
                version=common_pb2.VersionRef(model="acme/texts", alias="held-out")
            ),
            evaluation_chunks=3,
        ),
    )


def _model_spec() -> ConversionSpec:
    return ConversionSpec(
        task=ModelConversion(
            source=VersionRef(model="acme/base", version=4),
            outtype=GgufOuttype.BF16,
            register_outtype=True,
            quantizations=(
                QuantizationTarget(
                    type="Q4_K_M",
                    output_tensor_type="Q8_0",
                    pure=True,
                    tensor_types=(TensorTypeOverride(pattern="attn_v", type="Q6_K"),),
                ),
            ),
            imatrix=ImatrixOptions(
                calibration_text=ArtifactRef(
                    version=VersionRef(model="acme/texts", version=2), path="cal.txt"
                ),
                chunks=8,
            ),
            modelfile=ModelfileOptions(
                system="be brief",
                parameters=(ModelfileParameter(name="temperature", value="0.7"),),
            ),
        ),
        output=OutputOptions(model="acme/base-gguf", labels={"team": "ml"}, description="nightly"),
        verification=VerificationOptions(
            smoke_prompt="Hello",
            quality_metric=QualityMetric.PERPLEXITY,
            evaluation_text=ArtifactRef(version=VersionRef(model="acme/texts", alias="held-out")),
            evaluation_chunks=3,
        ),
    )


def _succeeded_messages() -> tuple[pb.Conversion, list[pb.ConversionEvent]]:
    result = pb.ConversionResult(
        outputs=[
            pb.ConvertedOutput(
                version=common_pb2.VersionRef(model="acme/base-gguf", version=1),
                file_type="BF16",
                size_bytes=2048,
                sha256="a" * 64,
                metadata=pb.GgufMetadata(
                    architecture="llama",
                    tensor_count=12,
                    context_length=256,
                    file_type="BF16",
                    has_chat_template=True,
                    parameter_count=1000,
                ),
            ),
            pb.ConvertedOutput(
                version=common_pb2.VersionRef(model="acme/base-gguf", version=2),
                file_type="Q4_K_M",
                size_bytes=1024,
                sha256="b" * 64,
                quality=pb.QualityFigure(
                    metric=pb.QUALITY_METRIC_PERPLEXITY,
                    value=12.5,
                    reference_value=12.25,
                    evaluation_text_sha256="c" * 64,
                    chunks=3,
                ),
                metadata=pb.GgufMetadata(architecture="llama", file_type="Q4_K_M"),
            ),
        ],
        llama_cpp_version="b1234",
        timings={
            "download": duration_pb2.Duration(seconds=1, nanos=250_000_000),
            "register": duration_pb2.Duration(nanos=5),
        },
    )
    accepted = pb.Conversion(
        id="cv-old",
        request_id="pipeline-1/gguf",
        spec=_model_spec_message(),
        state=pb.CONVERSION_STATE_QUEUED,
        last_event_sequence=1,
        create_time=_stamp(CREATED),
    )
    conversion = pb.Conversion()
    conversion.CopyFrom(accepted)
    conversion.state = pb.CONVERSION_STATE_SUCCEEDED
    conversion.percent = 100
    conversion.result.CopyFrom(result)
    conversion.start_time.CopyFrom(_stamp(STARTED))
    conversion.end_time.CopyFrom(_stamp(ENDED))

    def event(**payload: object) -> pb.ConversionEvent:
        return pb.ConversionEvent(conversion_id="cv-old", time=_stamp(ENDED), **payload)  # type: ignore[arg-type]

    events = [
        event(accepted=accepted),
        event(
            progress=pb.Progress(
                stage=pb.CONVERSION_STATE_DOWNLOADING, percent=7.5, bytes_done=1, bytes_total=9
            )
        ),
        event(log=common_pb2.LogLine(source=common_pb2.LOG_SOURCE_STDERR, text="loading")),
        event(
            retry=common_pb2.Retry(
                error=common_pb2.OperationError(
                    code="worker_killed", message="killed", retryable=True
                ),
                attempt=2,
                max_attempts=3,
                delay=duration_pb2.Duration(nanos=250_000_000),
            )
        ),
        event(
            progress=pb.Progress(stage=pb.CONVERSION_STATE_QUANTIZING, percent=50, target="Q4_K_M")
        ),
        event(result=result),
    ]
    return conversion, events


def _failed_messages() -> tuple[pb.Conversion, list[pb.ConversionEvent]]:
    error = common_pb2.OperationError(
        code="registry_unavailable", message="no registry", field="spec", retryable=True
    )
    conversion = pb.Conversion(
        id="cv-adapter",
        request_id="cv-adapter",
        spec=pb.ConversionSpec(
            adapter=pb.AdapterConversion(
                adapter=common_pb2.VersionRef(model="acme/lora", version=1),
                base=common_pb2.VersionRef(model="acme/base", version=4),
                outtype=pb.GGUF_OUTTYPE_F16,
                base_gguf=common_pb2.VersionRef(model="acme/base-gguf", version=1),
            )
        ),
        state=pb.CONVERSION_STATE_FAILED,
        failed_state=pb.CONVERSION_STATE_REGISTERING,
        percent=90,
        error=error,
        create_time=_stamp(CREATED),
        start_time=_stamp(STARTED),
        end_time=_stamp(ENDED),
    )
    return conversion, [
        pb.ConversionEvent(conversion_id="cv-adapter", time=_stamp(ENDED), error=error)
    ]


def test_records_stored_as_messages_load_into_the_converters_types(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "state.db")
    earlier = operation_store(connect(url), _MessageCodec())
    written: dict[str, tuple[pb.Conversion, list[pb.ConversionEvent]]] = {}
    for conversion, messages in (_succeeded_messages(), _failed_messages()):
        earlier.create(conversion, messages[0])
        for message in messages[1:]:
            earlier.record(conversion, message)
        written[conversion.id] = (conversion, messages)
    earlier.close()

    store = open_store(url)
    succeeded = store.get("cv-old")
    expected_result = ConversionResult(
        outputs=(
            ConvertedOutput(
                version=VersionRef(model="acme/base-gguf", version=1),
                adapter=False,
                file_type="BF16",
                size_bytes=2048,
                sha256="a" * 64,
                metadata=GgufMetadata(
                    architecture="llama",
                    tensor_count=12,
                    context_length=256,
                    file_type="BF16",
                    has_chat_template=True,
                    parameter_count=1000,
                ),
            ),
            ConvertedOutput(
                version=VersionRef(model="acme/base-gguf", version=2),
                adapter=False,
                file_type="Q4_K_M",
                size_bytes=1024,
                sha256="b" * 64,
                quality=QualityFigure(
                    metric=QualityMetric.PERPLEXITY,
                    value=12.5,
                    reference_value=12.25,
                    evaluation_text_sha256="c" * 64,
                    chunks=3,
                ),
                metadata=GgufMetadata(architecture="llama", file_type="Q4_K_M"),
            ),
        ),
        llama_cpp_version="b1234",
        timings={"download": 1.25, "register": 5e-9},
    )
    assert succeeded == Conversion(
        id="cv-old",
        request_id="pipeline-1/gguf",
        spec=_model_spec(),
        state=ConversionState.SUCCEEDED,
        create_time=CREATED,
        percent=100,
        result=expected_result,
        last_event_sequence=6,
        start_time=STARTED,
        end_time=ENDED,
    )
    events = store.events("cv-old")
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5, 6]
    assert {e.time for e in events} == {ENDED}
    accepted = events[0].payload
    assert isinstance(accepted, Conversion)
    assert (accepted.state, accepted.spec, accepted.last_event_sequence) == (
        ConversionState.QUEUED,
        _model_spec(),
        1,
    )
    assert [e.payload for e in events[1:]] == [
        Progress(stage=ConversionState.DOWNLOADING, percent=7.5, bytes_done=1, bytes_total=9),
        LogLine(source=LogSource.STDERR, text="loading"),
        Retry(
            error=OperationError(code="worker_killed", message="killed", retryable=True),
            attempt=2,
            max_attempts=3,
            delay_seconds=0.25,
        ),
        Progress(stage=ConversionState.QUANTIZING, percent=50, target="Q4_K_M"),
        expected_result,
    ]

    failed = store.get("cv-adapter")
    assert failed is not None
    assert failed.spec.task == AdapterConversion(
        adapter=VersionRef(model="acme/lora", version=1),
        base=VersionRef(model="acme/base", version=4),
        outtype=GgufOuttype.F16,
        base_gguf=VersionRef(model="acme/base-gguf", version=1),
    )
    assert (failed.state, failed.failed_state, failed.error) == (
        ConversionState.FAILED,
        ConversionState.REGISTERING,
        OperationError(
            code="registry_unavailable", message="no registry", field="spec", retryable=True
        ),
    )
    assert [c.id for c in store.page(labels={"source_model": "acme/lora"}).records] == [
        "cv-adapter"
    ]
    assert [c.id for c in store.page(states=["SUCCEEDED"]).records] == ["cv-old"]
    assert store.unfinished() == []

    # Encoded again, they are the messages that were stored: nothing was lost on the way.
    for conversion_id, (conversion, stored_events) in written.items():
        loaded = store.get(conversion_id)
        assert loaded is not None
        assert conversion_to_pb(loaded) == conversion
        assert [event_to_pb(e) for e in store.events(conversion_id)] == stored_events
    store.close()
