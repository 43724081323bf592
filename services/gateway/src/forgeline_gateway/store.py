"""The gateway's shared state: API keys (hashed), deployments and uploaded files.

In the gateway's database (``FORGELINE_GATEWAY_DATABASE_URL``): a SQLite file in the embedded
default, or PostgreSQL, where every gateway replica reads and writes the same rows. Calls are
small and rare (a key lookup misses the cache at most once per key per few seconds), so they run
on a worker thread, one at a time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from forgeline_kit.databases import AsyncDatabaseStore

__all__ = ["DeploymentRecord", "FileRecord", "KeyRecord", "Store"]

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    prefix      TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    scopes      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE TABLE IF NOT EXISTS deployments (
    name        TEXT PRIMARY KEY,
    spec        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    id          TEXT PRIMARY KEY,
    filename    TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    layout      TEXT NOT NULL,
    model       TEXT NOT NULL,
    version     INTEGER NOT NULL,
    path        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_creation ON files (created_at, id);
"""

_POSTGRESQL_MIGRATIONS = (
    (
        1,
        """
        CREATE TABLE api_keys (
            id          TEXT PRIMARY KEY,
            name        TEXT NOT NULL,
            prefix      TEXT NOT NULL,
            hash        TEXT NOT NULL UNIQUE,
            scopes      TEXT NOT NULL,
            created_at  BIGINT NOT NULL,
            revoked_at  BIGINT
        );
        CREATE TABLE deployments (
            name        TEXT PRIMARY KEY,
            spec        TEXT NOT NULL,
            created_at  BIGINT NOT NULL
        );
        CREATE TABLE files (
            id          TEXT PRIMARY KEY,
            filename    TEXT NOT NULL,
            purpose     TEXT NOT NULL,
            bytes       BIGINT NOT NULL,
            created_at  BIGINT NOT NULL,
            layout      TEXT NOT NULL,
            model       TEXT NOT NULL,
            version     INTEGER NOT NULL,
            path        TEXT NOT NULL
        );
        CREATE INDEX files_by_creation ON files (created_at, id);
        """,
    ),
)


@dataclass(frozen=True)
class KeyRecord:
    """An API key as stored: never the key itself, only its SHA-256."""

    id: str
    name: str
    prefix: str
    hash: str
    scopes: frozenset[str]
    created_at: int
    revoked_at: int | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class DeploymentRecord:
    name: str
    spec_json: str
    created_at: int


@dataclass(frozen=True)
class FileRecord:
    """An uploaded file (Files API): its bytes live in the registry version `model`:`version`
    at `path`; `layout_json` is how its records are laid out (see `forgeline_gateway.files`)."""

    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    layout_json: str
    model: str
    version: int
    path: str


class Store(AsyncDatabaseStore):
    """API keys, deployments and uploaded files. Open with `Store.open`; from asyncio code, call
    a method through `run` (a worker thread)."""

    COMPONENT = "gateway"
    SQLITE_SCHEMA = _SQLITE_SCHEMA
    POSTGRESQL_MIGRATIONS = _POSTGRESQL_MIGRATIONS

    # --- API keys -------------------------------------------------------------------------

    def add_key(self, record: KeyRecord) -> None:
        with self._lock:
            self._execute(
                "INSERT INTO api_keys (id, name, prefix, hash, scopes, created_at, revoked_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.name,
                    record.prefix,
                    record.hash,
                    ",".join(sorted(record.scopes)),
                    record.created_at,
                    record.revoked_at,
                ),
            )

    def key_by_hash(self, digest: str) -> KeyRecord | None:
        with self._lock:
            row = self._execute(
                "SELECT id, name, prefix, hash, scopes, created_at, revoked_at FROM api_keys "
                "WHERE hash = ?",
                (digest,),
            ).fetchone()
        return _key(row) if row else None

    def list_keys(self) -> list[KeyRecord]:
        with self._lock:
            rows = self._execute(
                "SELECT id, name, prefix, hash, scopes, created_at, revoked_at FROM api_keys "
                "ORDER BY created_at, id"
            ).fetchall()
        return [_key(row) for row in rows]

    def revoke_key(self, key_id: str) -> KeyRecord | None:
        """Mark a key revoked; returns it, or None if there is no such key."""
        with self._lock:
            self._execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (int(time.time()), key_id),
            )
            row = self._execute(
                "SELECT id, name, prefix, hash, scopes, created_at, revoked_at FROM api_keys "
                "WHERE id = ?",
                (key_id,),
            ).fetchone()
        return _key(row) if row else None

    # --- deployments ----------------------------------------------------------------------

    def put_deployment(self, record: DeploymentRecord) -> None:
        with self._lock:
            self._execute(
                "INSERT INTO deployments (name, spec, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, "
                "created_at = excluded.created_at",
                (record.name, record.spec_json, record.created_at),
            )

    def delete_deployment(self, name: str) -> None:
        with self._lock:
            self._execute("DELETE FROM deployments WHERE name = ?", (name,))

    def list_deployments(self) -> list[DeploymentRecord]:
        with self._lock:
            rows = self._execute(
                "SELECT name, spec, created_at FROM deployments ORDER BY created_at, name"
            ).fetchall()
        return [DeploymentRecord(name=r[0], spec_json=r[1], created_at=r[2]) for r in rows]

    # --- files ----------------------------------------------------------------------------

    def add_file(self, record: FileRecord) -> None:
        with self._lock:
            self._execute(
                f"INSERT INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.filename,
                    record.purpose,
                    record.bytes,
                    record.created_at,
                    record.layout_json,
                    record.model,
                    record.version,
                    record.path,
                ),
            )

    def get_file(self, file_id: str) -> FileRecord | None:
        with self._lock:
            row = self._execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE id = ?", (file_id,)
            ).fetchone()
        return FileRecord(*row) if row else None

    def list_files(
        self, *, purpose: str | None, after: FileRecord | None, limit: int, descending: bool
    ) -> list[FileRecord]:
        """Up to `limit` files in creation order (then id), those after `after` only."""
        clauses: list[str] = []
        values: list[str | int] = []
        if purpose is not None:
            clauses.append("purpose = ?")
            values.append(purpose)
        if after is not None:
            clauses.append(f"(created_at, id) {'<' if descending else '>'} (?, ?)")
            values += [after.created_at, after.id]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        order = "DESC" if descending else "ASC"
        with self._lock:
            rows = self._execute(
                # Only fixed fragments are formatted in; the values are bound.
                f"SELECT {_FILE_COLUMNS} FROM files {where} "
                f"ORDER BY created_at {order}, id {order} LIMIT ?",
                (*values, limit),
            ).fetchall()
        return [FileRecord(*row) for row in rows]

    def delete_file(self, file_id: str) -> bool:
        """Forget a file; False if there was none."""
        with self._lock:
            cursor = self._execute("DELETE FROM files WHERE id = ?", (file_id,))
        return cursor.rowcount > 0


_FILE_COLUMNS = "id, filename, purpose, bytes, created_at, layout, model, version, path"


def _key(row: tuple[str, str, str, str, str, int, int | None]) -> KeyRecord:
    return KeyRecord(
        id=row[0],
        name=row[1],
        prefix=row[2],
        hash=row[3],
        scopes=frozenset(s for s in row[4].split(",") if s),
        created_at=row[5],
        revoked_at=row[6],
    )
