"""A service's database, SQLite or PostgreSQL, named by its ``FORGELINE_<SERVICE>_DATABASE_URL``.

Every service keeps its durable state in one database: a SQLite file in its state directory by
default (the embedded default, one replica), or a PostgreSQL database that several replicas
share. A store writes its queries once, with ``?`` markers and SQL both databases accept
(``INSERT ... ON CONFLICT ... DO UPDATE``, row values, ``RETURNING``); a :class:`Dialect` holds the
little that differs (markers, how a write transaction starts, row locks). Each store names its
tables twice: a SQLite script safe to run again, and numbered PostgreSQL migrations that
:func:`apply_schema` applies once per database under an advisory lock, so replicas starting
together do not race.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Self, TypeVar

from forgeline_kit.sqlite import is_postgresql_url, open_database, sqlite_path

__all__ = [
    "POSTGRESQL",
    "SQLITE",
    "AsyncDatabaseStore",
    "Connection",
    "Cursor",
    "Database",
    "DatabaseUnavailableError",
    "Dialect",
    "Migrations",
    "apply_schema",
    "connect",
    "redact_url",
]

T = TypeVar("T")

#: Numbered schema versions of one component on PostgreSQL, applied in order; a released one
#: never changes.
Migrations = Sequence[tuple[int, str]]

#: The advisory lock schema changes hold on PostgreSQL (a constant other users avoid).
_MIGRATION_LOCK = 0x466F726765  # "Forge"


class Cursor(Protocol):
    """What stores read of a DB-API cursor (sqlite3's and psycopg's alike)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """What stores need of a DB-API connection in autocommit mode (sqlite3's with
    ``isolation_level=None``, psycopg's with ``autocommit=True``)."""

    def execute(self, query: str, params: Sequence[Any] = ..., /) -> Any: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Dialect:
    """What one database does its own way."""

    #: The statement that starts a write transaction.
    begin: str
    #: Appended to a SELECT inside a write transaction to lock the rows it reads.
    lock_row: str
    #: The parameter marker the driver takes in place of ``?``.
    marker: str
    #: The driver's unique-constraint error.
    integrity_error: type[Exception]

    def sql(self, query: str) -> str:
        return query if self.marker == "?" else query.replace("?", self.marker)


class _NoDriverError(Exception):
    """Stands in for psycopg's IntegrityError where psycopg is not installed."""


def _psycopg_integrity_error() -> type[Exception]:
    try:
        import psycopg
    except ImportError:  # without the postgres extra nothing connects to PostgreSQL anyway
        return _NoDriverError
    return psycopg.IntegrityError


#: ``BEGIN IMMEDIATE`` takes the write lock at once: two connections that read then write in one
#: transaction wait for each other instead of both reading the same state.
SQLITE = Dialect(
    begin="BEGIN IMMEDIATE", lock_row="", marker="?", integrity_error=sqlite3.IntegrityError
)
#: Rows a write depends on are locked with ``SELECT ... FOR UPDATE``.
POSTGRESQL = Dialect(
    begin="BEGIN", lock_row=" FOR UPDATE", marker="%s", integrity_error=_psycopg_integrity_error()
)


class DatabaseUnavailableError(RuntimeError):
    """The database a service's URL names cannot be reached (the message names it, without its
    password, and what to check)."""


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and logs."""
    scheme, separator, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not separator or not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


@dataclass(frozen=True)
class Database:
    """One open connection and what its database does its own way."""

    connection: Connection
    dialect: Dialect
    postgresql: bool

    def execute(self, query: str, params: Sequence[Any] = ()) -> Cursor:
        """Run ``query`` written with ``?`` markers; the cursor."""
        cursor: Cursor = self.connection.execute(self.dialect.sql(query), params)
        return cursor

    def executemany(self, query: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run ``query`` (``?`` markers) once per row."""
        connection: Any = self.connection
        cursor = connection.cursor()  # sqlite3's is no context manager
        try:
            cursor.executemany(self.dialect.sql(query), rows)
        finally:
            cursor.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction, rolled back on an exception. Callers hold their own lock:
        the connection is shared."""
        self.connection.execute(self.dialect.begin)
        try:
            yield
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        self.connection.execute("COMMIT")

    def close(self) -> None:
        self.connection.close()


def connect(url: str) -> Database:
    """The database at ``url``: ``sqlite:///PATH`` (created when missing, WAL) or
    ``postgresql://USER:PASSWORD@HOST/DB`` (needs the kit's ``postgres`` extra).

    Raises:
        ValueError: ``url`` is neither (the message says what is accepted).
        DatabaseUnavailableError: the PostgreSQL server cannot be reached or refuses the login.
    """
    if is_postgresql_url(url):
        import psycopg

        try:
            connection = psycopg.connect(url, autocommit=True)
        except psycopg.OperationalError as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
            raise DatabaseUnavailableError(
                f"cannot reach the database {redact_url(url)}: {reason}. Check that the server "
                "is running and that the URL's host, port, user and password are right."
            ) from None
        return Database(connection, POSTGRESQL, postgresql=True)
    return Database(open_database(sqlite_path(url), ""), SQLITE, postgresql=False)


def apply_schema(
    database: Database, component: str, *, sqlite: str, postgresql: Migrations
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


class AsyncDatabaseStore:
    """A store whose calls are short and synchronous, made from asyncio code through `run` (a
    worker thread); a lock keeps one call at a time on the connection. Subclasses name their
    tables (`COMPONENT`, `SQLITE_SCHEMA`, `POSTGRESQL_MIGRATIONS`) and hold their queries."""

    #: The name its PostgreSQL migrations are recorded under.
    COMPONENT: ClassVar[str]
    SQLITE_SCHEMA: ClassVar[str]
    POSTGRESQL_MIGRATIONS: ClassVar[Migrations]

    def __init__(self, database: Database) -> None:
        self._database = database
        self._lock = threading.RLock()

    @classmethod
    def open(cls, url: str) -> Self:
        """Open the store's database at ``url`` (a SQLite file is created when missing) with its
        tables brought up to date."""
        return cls(cls.open_database(url))

    @classmethod
    def open_database(cls, url: str) -> Database:
        """The database at ``url`` with the store's tables brought up to date (for a subclass
        whose `open` takes more)."""
        database = connect(url)
        try:
            apply_schema(
                database,
                cls.COMPONENT,
                sqlite=cls.SQLITE_SCHEMA,
                postgresql=cls.POSTGRESQL_MIGRATIONS,
            )
        except BaseException:
            database.close()
            raise
        return database

    @property
    def database(self) -> Database:
        return self._database

    def _execute(self, query: str, params: Sequence[Any] = ()) -> Cursor:
        return self._database.execute(query, params)

    def close(self) -> None:
        with self._lock:
            self._database.close()

    async def run(self, function: Callable[[], T]) -> T:
        """Run a store call on a worker thread."""
        return await asyncio.to_thread(function)
