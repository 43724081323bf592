"""Conversions and their numbered events, kept by the kit's operations layer so they outlive
the service.

This module says only what is the converter's own: a conversion is stored as its
``Conversion`` message and each event as its ``ConversionEvent``, listings filter on the source
model and version (labels), and the layout of earlier releases (``conversions`` and ``events``
tables) is adopted once at start, so an upgrade keeps every conversion and its history.
"""

from __future__ import annotations

from forgeline_kit.databases import Database, connect
from forgeline_kit.operations import RecordInfo
from forgeline_kit.operations.databases import operation_store
from forgeline_kit.operations.sql_store import SqlOperationStore
from forgeline_proto.converter.v1 import converter_pb2 as pb

__all__ = ["TERMINAL_STATES", "ConversionCodec", "ConversionStore", "open_store", "state_name"]

TERMINAL_STATES = frozenset(
    {
        pb.CONVERSION_STATE_SUCCEEDED,
        pb.CONVERSION_STATE_FAILED,
        pb.CONVERSION_STATE_CANCELLED,
    }
)

ConversionStore = SqlOperationStore[pb.Conversion, pb.ConversionEvent]


def state_name(state: pb.ConversionState.ValueType) -> str:
    """How the store names a state: ``SUCCEEDED`` for ``CONVERSION_STATE_SUCCEEDED``."""
    return pb.ConversionState.Name(state).removeprefix("CONVERSION_STATE_")


def source_of(spec: pb.ConversionSpec) -> tuple[str, int]:
    """The (model, version) a conversion reads: its source model or its adapter."""
    ref = spec.adapter.adapter if spec.HasField("adapter") else spec.model.source
    return ref.model, ref.version if ref.WhichOneof("selector") == "version" else 0


class ConversionCodec:
    """Conversions as the operations store keeps them."""

    kind = "conversion"

    def describe(self, record: pb.Conversion) -> RecordInfo:
        model, version = source_of(record.spec)
        return RecordInfo(
            id=record.id,
            request_id=record.request_id,
            created=record.create_time.ToNanoseconds() / 1e9,
            state=state_name(record.state),
            terminal=record.state in TERMINAL_STATES,
            labels={"source_model": model, "source_version": str(version)},
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


def open_store(url: str) -> ConversionStore:
    """The conversion store in the database at ``url`` (``sqlite:///...`` or
    ``postgresql://...``), with conversions kept in the earlier SQLite layout adopted."""
    database = connect(url)
    if not database.postgresql:
        # In WAL mode NORMAL survives a crash of the service; only a power loss or an OS crash
        # may lose the last transactions, a trade made for the many small event writes.
        database.execute("PRAGMA synchronous=NORMAL")
    store = operation_store(database, ConversionCodec())
    if not database.postgresql:
        _adopt_earlier_layout(database, store)
    return store


def _adopt_earlier_layout(database: Database, store: ConversionStore) -> None:
    tables = {
        row[0] for row in database.execute("SELECT name FROM sqlite_master WHERE type='table'")
    }
    if "conversions" not in tables:
        return
    for (blob,) in database.execute("SELECT data FROM conversions ORDER BY created, id").fetchall():
        conversion = pb.Conversion.FromString(blob)
        events = [
            pb.ConversionEvent.FromString(row[0])
            for row in database.execute(
                "SELECT data FROM events WHERE conversion_id = ? ORDER BY sequence",
                (conversion.id,),
            )
        ]
        store.adopt(conversion, events)
    database.execute("DROP TABLE events")
    database.execute("DROP TABLE conversions")
