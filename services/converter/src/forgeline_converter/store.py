"""Conversions and their numbered events, kept in SQLite so they outlive the service.

Each conversion is one row holding its ``Conversion`` message; each event one row keyed by
(conversion, sequence). Recording an event and the conversion it changed is one transaction, so
``last_event_sequence`` always names the newest stored event. ``request_id`` is unique: a
request repeated with the same key finds the conversion the first one created.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from forgeline_kit.sqlite import open_database
from forgeline_proto.converter.v1 import converter_pb2 as pb

__all__ = ["TERMINAL_STATES", "ConversionStore"]

TERMINAL_STATES = frozenset(
    {
        pb.CONVERSION_STATE_SUCCEEDED,
        pb.CONVERSION_STATE_FAILED,
        pb.CONVERSION_STATE_CANCELLED,
    }
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversions (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    state INTEGER NOT NULL,
    source_model TEXT NOT NULL,
    source_version INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS conversions_created ON conversions (created DESC, id DESC);
CREATE TABLE IF NOT EXISTS events (
    conversion_id TEXT NOT NULL REFERENCES conversions (id),
    sequence INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (conversion_id, sequence)
);
"""


def source_of(spec: pb.ConversionSpec) -> tuple[str, int]:
    """The (model, version) a conversion reads: its source model or its adapter."""
    ref = spec.adapter.adapter if spec.HasField("adapter") else spec.model.source
    return ref.model, ref.version if ref.WhichOneof("selector") == "version" else 0


class ConversionStore:
    """SQLite storage of conversions; every method is short and synchronous."""

    def __init__(self, path: Path) -> None:
        self._db = open_database(path, _SCHEMA)
        # In WAL mode NORMAL survives a crash of the service; only a power loss or an OS crash
        # may lose the last transactions, a trade made for the many small event writes.
        self._db.execute("PRAGMA synchronous=NORMAL")

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def create(self, conversion: pb.Conversion, first: pb.ConversionEvent) -> pb.Conversion:
        """Store a new conversion with its first event; or, when its ``request_id`` is known,
        return the conversion stored under it (and store nothing)."""
        model, version = source_of(conversion.spec)
        first.sequence = 1
        conversion.last_event_sequence = 1
        try:
            with self._transaction():
                self._db.execute(
                    "INSERT INTO conversions VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        conversion.id,
                        conversion.request_id,
                        conversion.create_time.ToNanoseconds() / 1e9,
                        conversion.state,
                        model,
                        version,
                        conversion.SerializeToString(),
                    ),
                )
                self._insert_event(first)
        except sqlite3.IntegrityError:
            existing = self.find_request(conversion.request_id)
            if existing is None:
                raise
            return existing
        return conversion

    def record(self, conversion: pb.Conversion, event: pb.ConversionEvent) -> None:
        """Store ``event`` as the conversion's next one, and ``conversion`` as changed by it
        (its ``last_event_sequence`` and the event's ``sequence`` are set here)."""
        event.sequence = conversion.last_event_sequence + 1
        conversion.last_event_sequence = event.sequence
        with self._transaction():
            self._insert_event(event)
            self._db.execute(
                "UPDATE conversions SET state = ?, data = ? WHERE id = ?",
                (conversion.state, conversion.SerializeToString(), conversion.id),
            )

    def get(self, conversion_id: str) -> pb.Conversion | None:
        """The conversion, or None."""
        row = self._db.execute(
            "SELECT data FROM conversions WHERE id = ?", (conversion_id,)
        ).fetchone()
        return None if row is None else pb.Conversion.FromString(row[0])

    def find_request(self, request_id: str) -> pb.Conversion | None:
        """The conversion created for ``request_id``, or None."""
        row = self._db.execute(
            "SELECT data FROM conversions WHERE request_id = ?", (request_id,)
        ).fetchone()
        return None if row is None else pb.Conversion.FromString(row[0])

    def events_after(self, conversion_id: str, after_sequence: int) -> list[pb.ConversionEvent]:
        """The conversion's events with a sequence above ``after_sequence``, in order."""
        rows = self._db.execute(
            "SELECT data FROM events WHERE conversion_id = ? AND sequence > ? ORDER BY sequence",
            (conversion_id, after_sequence),
        ).fetchall()
        return [pb.ConversionEvent.FromString(row[0]) for row in rows]

    def page(
        self,
        *,
        states: Sequence[int] = (),
        source_model: str = "",
        source_version: int = 0,
        offset: int = 0,
        limit: int = 50,
    ) -> list[pb.Conversion]:
        """Conversions newest first, filtered; ``limit`` rows from ``offset``."""
        clauses: list[str] = []
        values: list[object] = []
        if states:
            clauses.append(f"state IN ({', '.join('?' * len(states))})")
            values += list(states)
        if source_model:
            clauses.append("source_model = ?")
            values.append(source_model)
            if source_version:
                clauses.append("source_version = ?")
                values.append(source_version)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db.execute(
            f"SELECT data FROM conversions {where} ORDER BY created DESC, id DESC LIMIT ? OFFSET ?",
            (*values, limit, offset),
        ).fetchall()
        return [pb.Conversion.FromString(row[0]) for row in rows]

    def unfinished(self) -> list[pb.Conversion]:
        """Conversions not in a terminal state, oldest first."""
        rows = self._db.execute(
            f"SELECT data FROM conversions WHERE state NOT IN ({', '.join('?' * 3)}) "
            "ORDER BY created, id",
            tuple(TERMINAL_STATES),
        ).fetchall()
        return [pb.Conversion.FromString(row[0]) for row in rows]

    def _insert_event(self, event: pb.ConversionEvent) -> None:
        self._db.execute(
            "INSERT INTO events VALUES (?, ?, ?)",
            (event.conversion_id, event.sequence, event.SerializeToString()),
        )

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on an exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
