"""Opening a service's SQLite state (`forgeline_kit.sqlite`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar

from forgeline_kit.sqlite import AsyncSqliteStore, open_database

SCHEMA = "CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY);"


class Items(AsyncSqliteStore):
    SCHEMA: ClassVar[str] = SCHEMA

    def add(self, item: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO items VALUES (?)", (item,))

    def all(self) -> list[str]:
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT id FROM items ORDER BY id")]


def test_a_database_is_created_with_its_folder_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "state" / "items.db"

    connection = open_database(path, SCHEMA)

    assert path.is_file()
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert connection.execute("PRAGMA busy_timeout").fetchone() == (5000,)


def test_what_was_stored_is_there_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "items.db"
    store = Items.open(path)

    async def fill() -> None:
        await store.run(lambda: store.add("b"))
        await store.run(lambda: store.add("a"))

    asyncio.run(fill())  # written from worker threads
    store.close()

    reopened = Items.open(path)  # the schema applied again leaves the rows
    assert reopened.all() == ["a", "b"]
    reopened.close()
