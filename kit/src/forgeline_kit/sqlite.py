"""Database URLs, and the one way to open a service's SQLite file.

Each service's settings name its database with one setting, ``FORGELINE_<SERVICE>_DATABASE_URL``:
``sqlite:///PATH`` (the embedded default) or ``postgresql://...`` (several replicas;
`forgeline_kit.databases` opens both). A SQLite file always wants the same connection:
autocommit (each store opens the transactions it needs), WAL so a reader (a CLI, a second
connection) never waits for a writer, a busy timeout that waits out the writer instead of
failing, and the schema applied idempotently.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = [
    "SQLITE_URL_FORMS",
    "is_postgresql_url",
    "open_database",
    "sqlite_path",
    "sqlite_url",
]

#: How long a statement waits for another connection's write to end before failing.
BUSY_TIMEOUT_MS = 5000

#: The database URLs this version accepts, as messages name them.
SQLITE_URL_FORMS = "sqlite:///relative/path or sqlite:////absolute/path"

_POSTGRESQL_SCHEMES = frozenset({"postgresql", "postgres"})


def is_postgresql_url(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL database (``postgresql://``, ``postgres://``)."""
    scheme, separator, _ = url.partition("://")
    return bool(separator) and scheme.split("+", 1)[0].lower() in _POSTGRESQL_SCHEMES


def sqlite_path(url: str) -> Path:
    """The SQLite file a service's database URL names.

    The URL follows SQLAlchemy's convention: ``sqlite://`` (no host), ``/``, then the path. A
    path relative to the working directory follows three slashes
    (``sqlite:///.forgeline/gateway.sqlite3``), as a relative path setting always resolved, and
    an absolute one shows a fourth (``sqlite:////var/lib/forgeline/gateway.sqlite3``). The path
    is taken as written: no percent-decoding, no ``~``, no query parameters; and there is no
    in-memory database, since a service's state must outlive the process.

    Raises:
        ValueError: the URL names another database or is not one of the two forms above; the
            message says what is accepted.
    """
    scheme, separator, rest = url.partition("://")
    if is_postgresql_url(url):
        raise ValueError(f"a PostgreSQL URL names no SQLite file: expected {SQLITE_URL_FORMS}")
    if not separator:
        raise ValueError(f"not a database URL: a SQLite file is written {SQLITE_URL_FORMS}")
    if scheme.lower() != "sqlite":
        raise ValueError(f"{scheme}:// is not supported: expected {SQLITE_URL_FORMS}")
    if rest and not rest.startswith("/"):
        raise ValueError(f"a SQLite URL names a file, not a host: expected {SQLITE_URL_FORMS}")
    path = rest[1:]
    if not path or path == ":memory:":
        raise ValueError(
            f"no file is named (state must outlive the service): expected {SQLITE_URL_FORMS}"
        )
    if "?" in path:
        raise ValueError(f"query parameters are not supported: expected {SQLITE_URL_FORMS}")
    return Path(path)


def sqlite_url(path: Path | str) -> str:
    """The database URL of the SQLite file at `path` (`sqlite_path` reads it back): a relative
    path stays relative to the working directory, an absolute one gets its fourth slash."""
    return f"sqlite:///{path}"


def open_database(path: Path, schema: str) -> sqlite3.Connection:
    """The database at `path` (created with its folder when missing), usable from any thread
    (callers serialise their own use), with `schema` applied: statements that must be safe to
    run again (``CREATE ... IF NOT EXISTS``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    connection.executescript(schema)
    return connection
