"""A service's database: the same store code on SQLite and on PostgreSQL (a real server the
tests start), schema migrations applied once however many replicas start together, and a
database that cannot be reached named without its password."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from postgres_server import PostgresServer

from forgeline_kit.databases import (
    AsyncDatabaseStore,
    DatabaseUnavailableError,
    apply_schema,
    connect,
    redact_url,
)
from forgeline_kit.sqlite import sqlite_url


class Items(AsyncDatabaseStore):
    COMPONENT = "items"
    SQLITE_SCHEMA = (
        "CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY, count INTEGER NOT NULL);"
    )
    POSTGRESQL_MIGRATIONS = (
        (1, "CREATE TABLE items (id TEXT PRIMARY KEY, count INTEGER NOT NULL);"),
    )

    def bump(self, item: str) -> None:
        with self._lock:
            self._execute(
                "INSERT INTO items (id, count) VALUES (?, 1) "
                "ON CONFLICT (id) DO UPDATE SET count = items.count + 1",
                (item,),
            )

    def all(self) -> list[tuple[str, int]]:
        with self._lock:
            rows = self._execute("SELECT id, count FROM items ORDER BY id").fetchall()
        return [(row[0], row[1]) for row in rows]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "state" / "items.db")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


def test_what_was_stored_is_there_after_reopening(url: str) -> None:
    store = Items.open(url)

    async def fill() -> None:
        for item in ("b", "a", "b"):
            await store.run(lambda item=item: store.bump(item))  # type: ignore[misc]

    asyncio.run(fill())  # written from worker threads
    store.close()

    reopened = Items.open(url)  # the schema brought up to date again leaves the rows
    assert reopened.all() == [("a", 1), ("b", 2)]
    reopened.close()


def test_many_rows_are_written_in_one_call(url: str) -> None:
    store = Items.open(url)
    store.database.executemany(
        "INSERT INTO items (id, count) VALUES (?, ?)", ((f"i{n}", n) for n in range(3))
    )
    assert store.all() == [("i0", 0), ("i1", 1), ("i2", 2)]
    store.close()


def test_replicas_starting_together_apply_each_migration_once(postgres: PostgresServer) -> None:
    url = postgres.create_database()
    migrations = ((1, "CREATE TABLE a (x INTEGER)"), (2, "ALTER TABLE a ADD COLUMN y TEXT"))
    applied: list[list[int]] = []
    barrier = threading.Barrier(4)

    def start_replica() -> None:
        database = connect(url)
        barrier.wait()
        applied.append(apply_schema(database, "a", sqlite="", postgresql=migrations))
        database.close()

    _all_at_once([start_replica] * 4)

    assert sorted(applied) == [[], [], [], [1, 2]]
    database = connect(url)
    assert database.execute("SELECT x, y FROM a").fetchall() == []
    database.close()


def test_a_later_release_applies_only_its_new_migration(postgres: PostgresServer) -> None:
    url = postgres.create_database()
    first = ((1, "CREATE TABLE a (x INTEGER)"),)
    database = connect(url)
    assert apply_schema(database, "a", sqlite="", postgresql=first) == [1]
    database.execute("INSERT INTO a (x) VALUES (?)", (7,))

    later = (*first, (2, "ALTER TABLE a ADD COLUMN y TEXT DEFAULT 'kept'"))
    assert apply_schema(database, "a", sqlite="", postgresql=later) == [2]
    assert database.execute("SELECT x, y FROM a").fetchall() == [(7, "kept")]
    database.close()


def test_a_server_that_is_down_is_named_without_the_password(tmp_path: Path) -> None:
    url = f"postgresql://forgeline:s3cret@/forgeline?host={tmp_path}"

    with pytest.raises(DatabaseUnavailableError) as refused:
        connect(url)

    message = str(refused.value)
    assert "s3cret" not in message
    assert message.startswith("cannot reach the database postgresql://forgeline:***@/forgeline?")
    assert message.endswith("host, port, user and password are right.")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:pw@db:5432/forgeline", "postgresql://app:***@db:5432/forgeline"),
        ("postgresql://app@db/forgeline", "postgresql://app@db/forgeline"),
        ("sqlite:///state.db", "sqlite:///state.db"),
    ],
)
def test_urls_are_shown_without_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def _all_at_once(calls: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []

    def run(call: Callable[[], None]) -> None:
        try:
            call()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
