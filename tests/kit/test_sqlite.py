"""Opening a service's SQLite state (`forgeline_kit.sqlite`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from forgeline_kit.sqlite import (
    SQLITE_URL_FORMS,
    open_database,
    sqlite_path,
    sqlite_url,
)

SCHEMA = "CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY);"


def test_a_database_is_created_with_its_folder_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "state" / "items.db"

    connection = open_database(path, SCHEMA)

    assert path.is_file()
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert connection.execute("PRAGMA busy_timeout").fetchone() == (5000,)


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///.forgeline/gateway.sqlite3", Path(".forgeline/gateway.sqlite3")),
        ("sqlite:///state.db", Path("state.db")),
        (
            "sqlite:////var/lib/forgeline/gateway.sqlite3",
            Path("/var/lib/forgeline/gateway.sqlite3"),
        ),
        ("SQLite:///state.db", Path("state.db")),
    ],
)
def test_a_database_url_names_a_relative_or_absolute_sqlite_file(url: str, path: Path) -> None:
    # SQLAlchemy's convention: three slashes then the path, so an absolute path shows a fourth.
    assert sqlite_path(url) == path


@pytest.mark.parametrize("path", [Path("a/b.db"), Path("/srv/forgeline/c.db")])
def test_a_path_written_as_a_url_reads_back(path: Path) -> None:
    assert sqlite_path(sqlite_url(path)) == path


@pytest.mark.parametrize(
    "url", ["postgresql://forgeline@db/forgeline", "postgres://db/x", "postgresql+psycopg://db/x"]
)
def test_a_postgresql_url_names_no_sqlite_file(url: str) -> None:
    with pytest.raises(ValueError, match="names no SQLite file") as refused:
        sqlite_path(url)
    assert str(refused.value) == (
        "a PostgreSQL URL names no SQLite file: expected sqlite:///relative/path or "
        "sqlite:////absolute/path"
    )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("/var/lib/forgeline/state.db", "not a database URL"),
        ("mysql://db/x", "mysql:// is not supported"),
        ("sqlite+pysqlite:///x.db", "sqlite+pysqlite:// is not supported"),
        ("sqlite://host/x.db", "not a host"),
        ("sqlite:///", "no file is named"),
        ("sqlite://", "no file is named"),
        ("sqlite:///:memory:", "no file is named"),
        ("sqlite:///x.db?mode=ro", "query parameters"),
        ("", "not a database URL"),
    ],
)
def test_anything_else_is_refused_naming_what_is_accepted(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)) as refused:
        sqlite_path(url)
    assert str(refused.value).endswith(SQLITE_URL_FORMS)
