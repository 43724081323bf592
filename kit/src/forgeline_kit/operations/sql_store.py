"""The operations store in SQL, written once for every database it runs on.

Three tables, shared by every kind of work that lives in a database (``kind`` tells them
apart): ``operations`` (one row per record: the indexed columns and the encoded record),
``operation_events`` (one row per event, keyed by operation and sequence) and
``operation_labels`` (the filters a listing takes). ``seq``, the row's creation order, is the
position page tokens carry. Queries are written with ``?`` markers; a :class:`Dialect` says what
differs between databases (markers, how a write transaction starts and locks the row it
numbers from, the table definitions).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Generic

from forgeline_kit.databases import Connection, Dialect
from forgeline_kit.operations.codec import E, OperationCodec, R, RecordInfo
from forgeline_kit.operations.store import Head, Page

__all__ = ["SqlOperationStore"]

#: Beyond any position or sequence a store gives out.
_END = 1 << 62


class SqlOperationStore(Generic[R, E]):
    """:class:`~forgeline_kit.operations.store.OperationStore` on one connection.

    The connection may be shared with the service's own tables (the trainer's checkpoints);
    calls take a lock, so threads may share the store. The tables must exist (the dialect's
    store creates them).
    """

    def __init__(
        self, connection: Connection, codec: OperationCodec[R, E], dialect: Dialect
    ) -> None:
        self._db = connection
        self._codec = codec
        self._kind = codec.kind
        self._dialect = dialect
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _execute(self, query: str, params: Sequence[Any] = ()) -> Any:
        return self._db.execute(self._dialect.sql(query), params)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction (rolled back on an exception), holding the store's lock."""
        with self._lock:
            self._db.execute(self._dialect.begin)
            try:
                yield
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
                with self.transaction():
                    if first_event is not None:
                        first_event = self._codec.number_event(first_event, 1)
                        self._codec.number_record(record, 1)
                    self._insert_record(info, record, 0 if first_event is None else 1)
                    if first_event is not None:
                        self._insert_event(info.id, 1, first_event)
            except self._dialect.integrity_error:
                # Another connection stored the same request_id first.
                existing = self.find_request(info.request_id) if info.request_id else None
                if existing is None:
                    raise
                return existing, False
        return record, True

    def record(self, record: R, event: E) -> E:
        info = self._codec.describe(record)
        with self.transaction():
            sequence = self._next_sequence(info.id)
            event = self._codec.number_event(event, sequence)
            self._codec.number_record(record, sequence)
            self._insert_event(info.id, sequence, event)
            self._execute(
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
        with self.transaction():
            sequence = self._next_sequence(operation_id)
            event = self._codec.number_event(event, sequence)
            self._insert_event(operation_id, sequence, event)
            self._execute(
                "UPDATE operations SET last_sequence = ? WHERE id = ?", (sequence, operation_id)
            )
        return event

    def save(self, record: R) -> None:
        info = self._codec.describe(record)
        with self._lock:
            self._execute(
                "UPDATE operations SET state = ?, terminal = ?, record = ? WHERE id = ?",
                (info.state, int(info.terminal), self._codec.dump_record(record), info.id),
            )

    def adopt(self, record: R, events: Sequence[E]) -> None:
        info = self._codec.describe(record)
        with self.transaction():
            if self._execute("SELECT 1 FROM operations WHERE id = ?", (info.id,)).fetchone():
                return  # adopted before
            self._insert_record(info, record, len(events))
            for sequence, event in enumerate(events, start=1):
                self._insert_event(info.id, sequence, event)

    def _next_sequence(self, operation_id: str) -> int:
        row = self._execute(
            "SELECT last_sequence FROM operations WHERE id = ?" + self._dialect.lock_row,
            (operation_id,),
        ).fetchone()
        if row is None:
            raise KeyError(f"no stored operation {operation_id!r}")
        return int(row[0]) + 1

    def _insert_record(self, info: RecordInfo, record: R, last_sequence: int) -> None:
        self._execute(
            "INSERT INTO operations (kind, id, request_id, created, state, terminal, "
            "last_sequence, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self._kind,
                info.id,
                info.request_id or None,
                info.created,
                info.state,
                int(info.terminal),
                last_sequence,
                self._codec.dump_record(record),
            ),
        )
        for key, value in info.labels.items():
            self._execute(
                "INSERT INTO operation_labels (operation_id, key, value) VALUES (?, ?, ?)",
                (info.id, key, value),
            )

    def _insert_event(self, operation_id: str, sequence: int, event: E) -> None:
        self._execute(
            "INSERT INTO operation_events (operation_id, sequence, kind, event) "
            "VALUES (?, ?, ?, ?)",
            (operation_id, sequence, self._codec.event_kind(event), self._codec.dump_event(event)),
        )

    # --- reading

    def get(self, operation_id: str) -> R | None:
        row = self._one(
            "SELECT record FROM operations WHERE kind = ? AND id = ?", (self._kind, operation_id)
        )
        return None if row is None else self._codec.load_record(bytes(row[0]))

    def find_request(self, request_id: str) -> R | None:
        row = self._one(
            "SELECT record FROM operations WHERE kind = ? AND request_id = ?",
            (self._kind, request_id),
        )
        return None if row is None else self._codec.load_record(bytes(row[0]))

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
        return [self._codec.load_event(bytes(row[0])) for row in self._all(query, params)]

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
        rows = self._all(query, params)
        records = [self._codec.load_record(bytes(blob)) for _, blob in rows[:limit]]
        more = len(rows) > limit
        return Page(records=records, next_position=int(rows[limit - 1][0]) if more else None)

    def unfinished(self) -> list[R]:
        rows = self._all(
            "SELECT record FROM operations WHERE kind = ? AND terminal = 0 ORDER BY seq",
            (self._kind,),
        )
        return [self._codec.load_record(bytes(row[0])) for row in rows]

    def count_by_state(self) -> dict[str, int]:
        rows = self._all(
            "SELECT state, COUNT(*) FROM operations WHERE kind = ? GROUP BY state", (self._kind,)
        )
        return {str(state): int(count) for state, count in rows}

    def _one(self, query: str, params: Sequence[object]) -> tuple[Any, ...] | None:
        with self._lock:
            row: tuple[Any, ...] | None = self._execute(query, params).fetchone()
        return row

    def _all(self, query: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        with self._lock:
            rows: list[tuple[Any, ...]] = self._execute(query, params).fetchall()
        return rows
