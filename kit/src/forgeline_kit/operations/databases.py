"""Open the database a service's ``DATABASE_URL`` names, SQLite or PostgreSQL, and bring a
component's tables up to date on it.

A service with state beside its operations (the trainer's checkpoints) opens one
:class:`Database`, applies its own schema with :func:`apply_schema`, and builds its operations
store on the same connection (:func:`operation_store`), so one URL moves all its state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from forgeline_kit.operations.codec import E, OperationCodec, R
from forgeline_kit.operations.sql_store import Connection, Dialect, SqlOperationStore
from forgeline_kit.operations.sqlite_store import SCHEMA as SQLITE_SCHEMA
from forgeline_kit.operations.sqlite_store import SQLITE
from forgeline_kit.sqlite import is_postgresql_url, open_database, sqlite_path

__all__ = ["Database", "apply_schema", "connect", "operation_store"]

#: The advisory lock schema changes hold on PostgreSQL (a constant other users avoid).
_MIGRATION_LOCK = 0x466F726765  # "Forge"


@dataclass(frozen=True)
class Database:
    """One open connection and what its database does its own way."""

    connection: Connection
    dialect: Dialect
    postgresql: bool

    def execute(self, query: str, params: Sequence[Any] = ()) -> Any:
        """Run ``query`` written with ``?`` markers."""
        return self.connection.execute(self.dialect.sql(query), params)

    def close(self) -> None:
        self.connection.close()


def connect(url: str) -> Database:
    """The database at ``url``: ``sqlite:///PATH`` (created when missing, WAL) or
    ``postgresql://USER:PASSWORD@HOST/DB`` (needs the kit's ``postgres`` extra).

    Raises:
        ValueError: ``url`` is neither (the message says what is accepted).
    """
    if is_postgresql_url(url):
        import psycopg

        from forgeline_kit.operations.postgres_store import POSTGRESQL

        return Database(psycopg.connect(url, autocommit=True), POSTGRESQL, postgresql=True)
    return Database(open_database(sqlite_path(url), ""), SQLITE, postgresql=False)


def apply_schema(
    database: Database,
    component: str,
    *,
    sqlite: str,
    postgresql: Sequence[tuple[int, str]],
) -> list[int]:
    """Bring ``component``'s tables up to date: on SQLite, ``sqlite`` (statements safe to run
    again); on PostgreSQL, the numbered ``postgresql`` migrations it lacks, applied under an
    advisory lock and recorded in ``schema_migrations``, so replicas starting together apply
    each once. The versions applied now (PostgreSQL)."""
    connection: Any = database.connection
    if not database.postgresql:
        connection.executescript(sqlite)
        return []
    applied: list[int] = []
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
                "SELECT version FROM schema_migrations WHERE component = %s", (component,)
            )
        }
        for version, statements in postgresql:
            if version in done:
                continue
            connection.execute(statements)
            connection.execute(
                "INSERT INTO schema_migrations (component, version) VALUES (%s, %s)",
                (component, version),
            )
            applied.append(version)
    return applied


def operation_store(database: Database, codec: OperationCodec[R, E]) -> SqlOperationStore[R, E]:
    """The operations store on ``database``, its tables brought up to date first."""
    from forgeline_kit.operations.postgres_store import MIGRATIONS

    apply_schema(database, "operations", sqlite=SQLITE_SCHEMA, postgresql=MIGRATIONS)
    return SqlOperationStore(database.connection, codec, database.dialect)
