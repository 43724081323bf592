"""The operations store on PostgreSQL: for deployments where several replicas share state.

The same tables as SQLite's, created by versioned migrations (``MIGRATIONS``) that every process
applies at open under a transaction-scoped advisory lock, so replicas starting together apply
each one exactly once. A write that numbers an event locks the operation's row
(``SELECT ... FOR UPDATE``): two replicas recording events of one operation at once wait for
each other instead of giving out one sequence twice.

Needs ``psycopg`` (the kit's ``postgres`` extra).
"""

from __future__ import annotations

from typing import Any

from forgeline_kit.databases import POSTGRESQL, Database, apply_schema
from forgeline_kit.operations.codec import E, OperationCodec, R
from forgeline_kit.operations.sql_store import SqlOperationStore

__all__ = ["MIGRATIONS", "PostgresOperationStore", "migrate"]

#: Schema versions of the operations tables, applied in order; a released one never changes.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE operations (
            seq BIGSERIAL PRIMARY KEY,
            kind TEXT NOT NULL,
            id TEXT NOT NULL UNIQUE,
            request_id TEXT,
            created DOUBLE PRECISION NOT NULL,
            state TEXT NOT NULL,
            terminal INTEGER NOT NULL,
            last_sequence BIGINT NOT NULL,
            record BYTEA NOT NULL,
            UNIQUE (kind, request_id)
        );
        CREATE INDEX operations_by_kind ON operations (kind, terminal, seq);
        CREATE TABLE operation_events (
            operation_id TEXT NOT NULL,
            sequence BIGINT NOT NULL,
            kind TEXT NOT NULL,
            event BYTEA NOT NULL,
            PRIMARY KEY (operation_id, sequence)
        );
        CREATE TABLE operation_labels (
            operation_id TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (operation_id, key)
        );
        CREATE INDEX operation_labels_by_value ON operation_labels (key, value);
        """,
    ),
)


def migrate(connection: Any) -> list[int]:
    """Apply the operations migrations ``connection``'s database lacks; the versions applied
    now."""
    database = Database(connection, POSTGRESQL, postgresql=True)
    return apply_schema(database, "operations", sqlite="", postgresql=MIGRATIONS)


class PostgresOperationStore(SqlOperationStore[R, E]):
    """The operations store on one PostgreSQL connection."""

    @classmethod
    def open(cls, url: str, codec: OperationCodec[R, E]) -> PostgresOperationStore[R, E]:
        """The store in the database at ``url`` (``postgresql://user:password@host/db``), its
        schema brought up to date first."""
        import psycopg

        connection = psycopg.connect(url, autocommit=True)
        migrate(connection)
        return cls(connection, codec, POSTGRESQL)
