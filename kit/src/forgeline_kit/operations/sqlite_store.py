"""The operations store on SQLite: the embedded default, one file in the service's state.

Three tables, shared by every kind of work that lives in the database (``kind`` tells them
apart): ``operations`` (one row per record: the indexed columns and the encoded record),
``operation_events`` (one row per event, keyed by operation and sequence) and
``operation_labels`` (the filters a listing takes). ``seq``, the row's creation order, is the
position page tokens carry.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic

from forgeline_kit.operations.codec import E, OperationCodec, R
from forgeline_kit.operations.store import Head, Page
from forgeline_kit.sqlite import open_database

__all__ = ["SCHEMA", "SqliteOperationStore"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    id TEXT NOT NULL UNIQUE,
    request_id TEXT,
    created REAL NOT NULL,
    state TEXT NOT NULL,
    terminal INTEGER NOT NULL,
    last_sequence INTEGER NOT NULL,
    record BLOB NOT NULL,
    UNIQUE (kind, request_id)
);
CREATE INDEX IF NOT EXISTS operations_by_kind ON operations (kind, terminal, seq);
CREATE TABLE IF NOT EXISTS operation_events (
    operation_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    kind TEXT NOT NULL,
    event BLOB NOT NULL,
    PRIMARY KEY (operation_id, sequence)
);
CREATE TABLE IF NOT EXISTS operation_labels (
    operation_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (operation_id, key)
);
CREATE INDEX IF NOT EXISTS operation_labels_by_value ON operation_labels (key, value);
"""

#: Beyond any position or sequence a store gives out.
_END = 1 << 62


class SqliteOperationStore(Generic[R, E]):
    """:class:`~forgeline_kit.operations.store.OperationStore` on one SQLite connection.

    The connection may be shared with the service's own tables (the trainer's checkpoints);
    calls take a lock, so threads may share the store.
    """

    def __init__(self, connection: sqlite3.Connection, codec: OperationCodec[R, E]) -> None:
        self._db = connection
        self._db.executescript(SCHEMA)
        self._codec = codec
        self._kind = codec.kind
        self._lock = threading.RLock()

    @classmethod
    def open(cls, path: Path, codec: OperationCodec[R, E]) -> SqliteOperationStore[R, E]:
        """The store in the database at ``path`` (created when missing)."""
        return cls(open_database(path, SCHEMA), codec)

    @property
    def connection(self) -> sqlite3.Connection:
        """The connection, for a service's own tables in the same file."""
        return self._db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception), holding the store's lock."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # --- writing

    def create(self, record: R, first_event: E | None = None) -> tuple[R, bool]:
        info = self._codec.describe(record)
        with self._lock:
            if info.request_id:
                existing = self.find_request(info.request_id)
                if existing is not None:
                    return existing, False
            try:
                with self.transaction() as db:
                    last = 0
                    if first_event is not None:
                        last = 1
                        self._codec.number_event(first_event, 1)
                        self._codec.number_record(record, 1)
                    db.execute(
                        "INSERT INTO operations (kind, id, request_id, created, state, terminal, "
                        "last_sequence, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            self._kind,
                            info.id,
                            info.request_id or None,
                            info.created,
                            info.state,
                            int(info.terminal),
                            last,
                            self._codec.dump_record(record),
                        ),
                    )
                    db.executemany(
                        "INSERT INTO operation_labels (operation_id, key, value) VALUES (?, ?, ?)",
                        [(info.id, key, value) for key, value in info.labels.items()],
                    )
                    if first_event is not None:
                        self._insert_event(info.id, 1, first_event)
            except sqlite3.IntegrityError:
                # Another connection stored the same request_id first.
                existing = self.find_request(info.request_id) if info.request_id else None
                if existing is None:
                    raise
                return existing, False
        return record, True

    def record(self, record: R, event: E) -> E:
        info = self._codec.describe(record)
        with self.transaction() as db:
            sequence = self._next_sequence(info.id)
            self._codec.number_event(event, sequence)
            self._codec.number_record(record, sequence)
            self._insert_event(info.id, sequence, event)
            db.execute(
                "UPDATE operations SET state = ?, terminal = ?, last_sequence = ?, record = ? "
                "WHERE id = ?",
                (
                    info.state,
                    int(info.terminal),
                    sequence,
                    self._codec.dump_record(record),
                    info.id,
                ),
            )
        return event

    def append(self, operation_id: str, event: E) -> E:
        with self.transaction() as db:
            sequence = self._next_sequence(operation_id)
            self._codec.number_event(event, sequence)
            self._insert_event(operation_id, sequence, event)
            db.execute(
                "UPDATE operations SET last_sequence = ? WHERE id = ?", (sequence, operation_id)
            )
        return event

    def _next_sequence(self, operation_id: str) -> int:
        row = self._db.execute(
            "SELECT last_sequence FROM operations WHERE id = ?", (operation_id,)
        ).fetchone()
        if row is None:
            raise KeyError(f"no stored operation {operation_id!r}")
        return int(row[0]) + 1

    def save(self, record: R) -> None:
        info = self._codec.describe(record)
        with self._lock:
            self._db.execute(
                "UPDATE operations SET state = ?, terminal = ?, record = ? WHERE id = ?",
                (info.state, int(info.terminal), self._codec.dump_record(record), info.id),
            )

    def adopt(self, record: R, events: Sequence[E]) -> None:
        info = self._codec.describe(record)
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM operations WHERE id = ?", (info.id,)).fetchone():
                return  # adopted before
            db.execute(
                "INSERT INTO operations (kind, id, request_id, created, state, terminal, "
                "last_sequence, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self._kind,
                    info.id,
                    info.request_id or None,
                    info.created,
                    info.state,
                    int(info.terminal),
                    len(events),
                    self._codec.dump_record(record),
                ),
            )
            db.executemany(
                "INSERT INTO operation_labels (operation_id, key, value) VALUES (?, ?, ?)",
                [(info.id, key, value) for key, value in info.labels.items()],
            )
            for sequence, event in enumerate(events, start=1):
                self._insert_event(info.id, sequence, event)

    def _insert_event(self, operation_id: str, sequence: int, event: E) -> None:
        self._db.execute(
            "INSERT INTO operation_events (operation_id, sequence, kind, event) "
            "VALUES (?, ?, ?, ?)",
            (operation_id, sequence, self._codec.event_kind(event), self._codec.dump_event(event)),
        )

    # --- reading

    def get(self, operation_id: str) -> R | None:
        row = self._one(
            "SELECT record FROM operations WHERE kind = ? AND id = ?", (self._kind, operation_id)
        )
        return None if row is None else self._codec.load_record(row[0])

    def find_request(self, request_id: str) -> R | None:
        row = self._one(
            "SELECT record FROM operations WHERE kind = ? AND request_id = ?",
            (self._kind, request_id),
        )
        return None if row is None else self._codec.load_record(row[0])

    def head(self, operation_id: str) -> Head | None:
        row = self._one(
            "SELECT terminal, last_sequence FROM operations WHERE kind = ? AND id = ?",
            (self._kind, operation_id),
        )
        return None if row is None else Head(terminal=bool(row[0]), last_sequence=int(row[1]))

    def position(self, operation_id: str) -> int | None:
        row = self._one(
            "SELECT seq FROM operations WHERE kind = ? AND id = ?", (self._kind, operation_id)
        )
        return None if row is None else int(row[0])

    def events(
        self,
        operation_id: str,
        *,
        after: int = 0,
        limit: int = 500,
        descending: bool = False,
        kinds: Sequence[str] = (),
    ) -> list[E]:
        if descending:
            query = "SELECT event FROM operation_events WHERE operation_id = ? AND sequence < ?"
            params: list[object] = [operation_id, after if after > 0 else _END]
        else:
            query = "SELECT event FROM operation_events WHERE operation_id = ? AND sequence > ?"
            params = [operation_id, after]
        if kinds:
            query += f" AND kind IN ({', '.join('?' * len(kinds))})"
            params += list(kinds)
        query += f" ORDER BY sequence {'DESC' if descending else 'ASC'} LIMIT ?"
        params.append(limit)
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        return [self._codec.load_event(row[0]) for row in rows]

    def page(
        self,
        *,
        after: int | None = None,
        states: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        limit: int = 50,
    ) -> Page[R]:
        query = "SELECT seq, record FROM operations WHERE kind = ? AND seq < ?"
        params: list[object] = [self._kind, after if after is not None else _END]
        if states:
            query += f" AND state IN ({', '.join('?' * len(states))})"
            params += list(states)
        for key, value in (labels or {}).items():
            query += (
                " AND id IN (SELECT operation_id FROM operation_labels WHERE key = ? AND value = ?)"
            )
            params += [key, value]
        query += " ORDER BY seq DESC LIMIT ?"
        params.append(limit + 1)
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        records = [self._codec.load_record(blob) for _, blob in rows[:limit]]
        more = len(rows) > limit
        return Page(records=records, next_position=int(rows[limit - 1][0]) if more else None)

    def unfinished(self) -> list[R]:
        with self._lock:
            rows = self._db.execute(
                "SELECT record FROM operations WHERE kind = ? AND terminal = 0 ORDER BY seq",
                (self._kind,),
            ).fetchall()
        return [self._codec.load_record(row[0]) for row in rows]

    def count_by_state(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT state, COUNT(*) FROM operations WHERE kind = ? GROUP BY state",
                (self._kind,),
            ).fetchall()
        return {str(state): int(count) for state, count in rows}

    def _one(self, query: str, params: Sequence[object]) -> tuple[Any, ...] | None:
        with self._lock:
            row: tuple[Any, ...] | None = self._db.execute(query, params).fetchone()
        return row
