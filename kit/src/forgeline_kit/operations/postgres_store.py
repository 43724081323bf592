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

from forgeline_kit.operations.codec import E, OperationCodec, R
from forgeline_kit.operations.sql_store import Dialect, SqlOperationStore

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

#: The advisory lock migrations hold (any constant the other users of the database avoid).
_MIGRATION_LOCK = 0x466F726765  # "Forge"
_COMPONENT = "operations"


def _dialect() -> Dialect:
    import psycopg

    return Dialect(
        begin="BEGIN", lock_row=" FOR UPDATE", marker="%s", integrity_error=psycopg.IntegrityError
    )


def migrate(connection: Any) -> list[int]:
    """Apply the migrations ``connection``'s database lacks; the versions applied now."""
    applied_now: list[int] = []
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (component TEXT NOT NULL, "
            "version INTEGER NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now(), "
            "PRIMARY KEY (component, version))"
        )
        done = {
            int(row[0])
            for row in connection.execute(
                "SELECT version FROM schema_migrations WHERE component = %s", (_COMPONENT,)
            )
        }
        for version, statements in MIGRATIONS:
            if version in done:
                continue
            connection.execute(statements)
            connection.execute(
                "INSERT INTO schema_migrations (component, version) VALUES (%s, %s)",
                (_COMPONENT, version),
            )
            applied_now.append(version)
    return applied_now


class PostgresOperationStore(SqlOperationStore[R, E]):
    """The operations store on one PostgreSQL connection."""

    @classmethod
    def open(cls, url: str, codec: OperationCodec[R, E]) -> PostgresOperationStore[R, E]:
        """The store in the database at ``url`` (``postgresql://user:password@host/db``), its
        schema brought up to date first."""
        import psycopg

        connection = psycopg.connect(url, autocommit=True)
        migrate(connection)
        return cls(connection, codec, _dialect())
