"""Where a test's services keep their state: a SQLite file by default; with
``FORGELINE_TEST_DATABASE=postgresql`` (``make test-postgres``), a database of its own on the one
PostgreSQL server the test session starts.

Tests name a service's state by a path (``tmp_path / "gateway.sqlite3"``) and turn it into the
service's ``DATABASE_URL`` with :func:`database_url`; the same path always gives the same
database, so a test that restarts a service, or writes a key before starting the gateway, finds
its state again on either database.
"""

from __future__ import annotations

import atexit
import os
import threading
from contextlib import ExitStack
from pathlib import Path

from postgres_server import PostgresServer, running_postgres

from forgeline_kit.sqlite import sqlite_url

__all__ = ["SWITCH", "database_url", "on_postgresql", "shared_postgres"]

#: The environment variable that moves every service's state to PostgreSQL.
SWITCH = "FORGELINE_TEST_DATABASE"

_lock = threading.Lock()
_server: PostgresServer | None = None
_databases: dict[Path, str] = {}


def on_postgresql() -> bool:
    """Whether this run keeps services' state on PostgreSQL."""
    value = os.environ.get(SWITCH, "sqlite").strip().lower()
    if value not in {"sqlite", "postgresql"}:
        raise RuntimeError(f"{SWITCH}={value!r}: expected sqlite (the default) or postgresql")
    return value == "postgresql"


def shared_postgres() -> PostgresServer:
    """The session's PostgreSQL server, started on first use and stopped when the tests end."""
    global _server
    with _lock:
        if _server is None:
            stack = ExitStack()
            _server = stack.enter_context(running_postgres())
            atexit.register(stack.close)
        return _server


def database_url(path: Path) -> str:
    """The database URL a service started by a test uses for the state named by ``path``."""
    if not on_postgresql():
        return sqlite_url(path)
    key = path.absolute()
    server = shared_postgres()
    with _lock:
        if key not in _databases:
            _databases[key] = server.create_database()
        return _databases[key]
