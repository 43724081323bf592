"""Conversions and their numbered events, kept by the kit's operations layer so they outlive
the service.

This module says only what is the converter's own: a conversion is stored as its serialized
``Conversion`` message and each event as its ``ConversionEvent`` (the encoding every release
wrote, translated to and from the converter's types by `convert`, so storage is an edge like
the API), listings filter on the source model and version (labels), and the layout of earlier
releases (``conversions`` and ``events`` tables) is adopted once at start, so an upgrade keeps
every conversion and its history.
"""

from __future__ import annotations

from dataclasses import replace

from forgeline_converter.conversions import (
    TERMINAL_STATES,
    Conversion,
    ConversionEvent,
    VersionRef,
)
from forgeline_converter.convert import (
    conversion_from_pb,
    conversion_to_pb,
    event_from_pb,
    event_to_pb,
    payload_field,
)
from forgeline_kit.databases import Database, connect
from forgeline_kit.operations import RecordInfo
from forgeline_kit.operations.databases import operation_store
from forgeline_kit.operations.sql_store import SqlOperationStore
from forgeline_proto.converter.v1 import converter_pb2 as pb

__all__ = ["ConversionCodec", "ConversionStore", "open_store"]

ConversionStore = SqlOperationStore[Conversion, ConversionEvent]


class ConversionCodec:
    """Conversions as the operations store keeps them."""

    kind = "conversion"

    def describe(self, record: Conversion) -> RecordInfo:
        """Its id, request id, creation time, state (``SUCCEEDED``), and the labels listings
        filter on: the source model and version it reads."""
        source = record.spec.source or VersionRef(model="")
        return RecordInfo(
            id=record.id,
            request_id=record.request_id,
            created=record.create_time.timestamp(),
            state=record.state.name,
            terminal=record.state in TERMINAL_STATES,
            labels={"source_model": source.model, "source_version": str(source.version or 0)},
        )

    def dump_record(self, record: Conversion) -> bytes:
        return conversion_to_pb(record).SerializeToString()

    def load_record(self, data: bytes) -> Conversion:
        return conversion_from_pb(pb.Conversion.FromString(data))

    def dump_event(self, event: ConversionEvent) -> bytes:
        return event_to_pb(event).SerializeToString()

    def load_event(self, data: bytes) -> ConversionEvent:
        return event_from_pb(pb.ConversionEvent.FromString(data))

    def event_kind(self, event: ConversionEvent) -> str:
        return payload_field(event.payload)

    def number_event(self, event: ConversionEvent, sequence: int) -> ConversionEvent:
        return replace(event, sequence=sequence)

    def number_record(self, record: Conversion, sequence: int) -> None:
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
    codec = ConversionCodec()
    for (blob,) in database.execute("SELECT data FROM conversions ORDER BY created, id").fetchall():
        conversion = codec.load_record(blob)
        events = [
            codec.load_event(row[0])
            for row in database.execute(
                "SELECT data FROM events WHERE conversion_id = ? ORDER BY sequence",
                (conversion.id,),
            )
        ]
        store.adopt(conversion, events)
    database.execute("DROP TABLE events")
    database.execute("DROP TABLE conversions")
