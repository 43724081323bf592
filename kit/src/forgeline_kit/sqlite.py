"""A service's SQLite state: one way to open it, and one base for stores used from asyncio.

Every service keeps its durable state (jobs, conversions, deployments, keys, evals) in one SQLite
file of its state directory. They all want the same connection: autocommit (each store opens the
transactions it needs), WAL so a reader (a CLI, a second connection) never waits for a writer, a
busy timeout that waits out the writer instead of failing, and the schema applied idempotently.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Self, TypeVar

__all__ = ["AsyncSqliteStore", "open_database"]

T = TypeVar("T")

#: How long a statement waits for another connection's write to end before failing.
BUSY_TIMEOUT_MS = 5000


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


class AsyncSqliteStore:
    """A store whose calls are short and synchronous, made from asyncio code through `run` (a
    worker thread); a lock keeps one call at a time on the connection. Subclasses set `SCHEMA`
    and hold their queries."""

    SCHEMA: ClassVar[str]

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path) -> Self:
        """Open (creating if needed) the store's database at `path`."""
        return cls(open_database(path, cls.SCHEMA))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    async def run(self, function: Callable[[], T]) -> T:
        """Run a store call on a worker thread."""
        return await asyncio.to_thread(function)
