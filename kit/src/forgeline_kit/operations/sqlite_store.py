"""The operations store on SQLite: the embedded default, one file in the service's state.

Write transactions start with ``BEGIN IMMEDIATE``, which takes the database's write lock at
once: two connections numbering events of one operation wait for each other instead of both
reading the same newest sequence.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from forgeline_kit.databases import SQLITE
from forgeline_kit.operations.codec import E, OperationCodec, R
from forgeline_kit.operations.sql_store import SqlOperationStore
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


class SqliteOperationStore(SqlOperationStore[R, E]):
    """The operations store on one SQLite connection (shared with the service's own tables
    where it has some)."""

    def __init__(self, connection: sqlite3.Connection, codec: OperationCodec[R, E]) -> None:
        connection.executescript(SCHEMA)
        super().__init__(connection, codec, SQLITE)
        self._sqlite = connection

    @classmethod
    def open(cls, path: Path, codec: OperationCodec[R, E]) -> SqliteOperationStore[R, E]:
        """The store in the database at ``path`` (created when missing)."""
        return cls(open_database(path, SCHEMA), codec)

    @property
    def connection(self) -> sqlite3.Connection:
        """The connection, for a service's own tables in the same file."""
        return self._sqlite
