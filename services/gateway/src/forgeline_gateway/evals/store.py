"""Evals, runs, their rows and output items in the gateway's database (SQLite or PostgreSQL,
with the rest of the gateway's state).

A separate connection from the key/deployment store: the tables share nothing but the database. A
run's rows are written with the run, so a run never needs its data source again (a file deleted
meanwhile does not matter), and a restarted gateway resumes it from the rows without an output.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from typing import Any, Literal

from forgeline_gateway.evals.records import TERMINAL, EvalRecord, OutputRecord, RunRecord
from forgeline_gateway.evals.rows import Row
from forgeline_kit.leases import LeasedStore

__all__ = ["EvalStore"]

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS evals (
    id          TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    record      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS eval_runs (
    id          TEXT PRIMARY KEY,
    eval_id     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    status      TEXT NOT NULL,
    record      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS eval_runs_by_eval ON eval_runs (eval_id, created_at, id);
CREATE TABLE IF NOT EXISTS eval_run_rows (
    run_id      TEXT NOT NULL,
    position    INTEGER NOT NULL,
    row         TEXT NOT NULL,
    PRIMARY KEY (run_id, position)
);
CREATE TABLE IF NOT EXISTS eval_output_items (
    id          TEXT PRIMARY KEY,
    run_id      TEXT NOT NULL,
    position    INTEGER NOT NULL,
    status      TEXT NOT NULL,
    record      TEXT NOT NULL,
    UNIQUE (run_id, position)
);
"""

_POSTGRESQL_MIGRATIONS = (
    (
        1,
        """
        CREATE TABLE evals (
            id          TEXT PRIMARY KEY,
            created_at  BIGINT NOT NULL,
            updated_at  BIGINT NOT NULL,
            record      TEXT NOT NULL
        );
        CREATE TABLE eval_runs (
            id          TEXT PRIMARY KEY,
            eval_id     TEXT NOT NULL,
            created_at  BIGINT NOT NULL,
            status      TEXT NOT NULL,
            record      TEXT NOT NULL
        );
        CREATE INDEX eval_runs_by_eval ON eval_runs (eval_id, created_at, id);
        CREATE TABLE eval_run_rows (
            run_id      TEXT NOT NULL,
            position    INTEGER NOT NULL,
            row         TEXT NOT NULL,
            PRIMARY KEY (run_id, position)
        );
        CREATE TABLE eval_output_items (
            id          TEXT PRIMARY KEY,
            run_id      TEXT NOT NULL,
            position    INTEGER NOT NULL,
            status      TEXT NOT NULL,
            record      TEXT NOT NULL,
            UNIQUE (run_id, position)
        );
        """,
    ),
)

_UNFINISHED = "('queued', 'in_progress')"
Order = Literal["asc", "desc"]


class EvalStore(LeasedStore):
    """Every call is short and runs on a worker thread through `run`; writes that must agree
    (an output item and its run's counts) happen in one transaction. `leases` are this
    replica's (on a connection of their own): a run is executed by the replica holding its
    lease."""

    COMPONENT = "gateway_evals"
    SQLITE_SCHEMA = _SQLITE_SCHEMA
    POSTGRESQL_MIGRATIONS = _POSTGRESQL_MIGRATIONS

    # --- evals ----------------------------------------------------------------------------

    def put_eval(self, record: EvalRecord) -> None:
        with self._lock:
            self._execute(
                "INSERT INTO evals (id, created_at, updated_at, record) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET created_at = excluded.created_at, "
                "updated_at = excluded.updated_at, record = excluded.record",
                (record.id, record.created_at, record.updated_at, record.model_dump_json()),
            )

    def get_eval(self, eval_id: str) -> EvalRecord | None:
        with self._lock:
            row = self._execute("SELECT record FROM evals WHERE id = ?", (eval_id,)).fetchone()
        return EvalRecord.model_validate_json(row[0]) if row else None

    def list_evals(
        self,
        *,
        after: EvalRecord | None,
        limit: int,
        order: Order,
        order_by: Literal["created_at", "updated_at"],
    ) -> tuple[list[EvalRecord], bool]:
        """A page of evals ordered by `order_by` (then id), those after `after` only; and
        whether more follow."""
        column = "updated_at" if order_by == "updated_at" else "created_at"
        query, params = "SELECT record FROM evals", list[Any]()
        if after is not None:
            query += f" WHERE ({column}, id) {'<' if order == 'desc' else '>'} (?, ?)"
            params += [getattr(after, column), after.id]
        direction = "DESC" if order == "desc" else "ASC"
        # Only fixed fragments are formatted in; the values are bound.
        query += f" ORDER BY {column} {direction}, id {direction} LIMIT ?"
        rows = self._fetch(query, [*params, limit + 1])
        records = [EvalRecord.model_validate_json(r[0]) for r in rows]
        return records[:limit], len(records) > limit

    def delete_eval(self, eval_id: str) -> bool:
        """Forget an eval with its runs, rows and output items; False if there was none."""
        with self._lock, self._transaction():
            runs = [r[0] for r in self._execute(
                "SELECT id FROM eval_runs WHERE eval_id = ?", (eval_id,)
            ).fetchall()]  # fmt: skip
            for run_id in runs:
                self._delete_run(run_id)
            cursor = self._execute("DELETE FROM evals WHERE id = ?", (eval_id,))
        return cursor.rowcount > 0

    # --- runs -----------------------------------------------------------------------------

    def create_run(self, run: RunRecord, rows: list[Row]) -> None:
        """Store a new run with its rows."""
        with self._lock, self._transaction():
            self._execute(
                "INSERT INTO eval_runs (id, eval_id, created_at, status, record) "
                "VALUES (?, ?, ?, ?, ?)",
                (run.id, run.eval_id, run.created_at, run.status, run.model_dump_json()),
            )
            self.database.executemany(
                "INSERT INTO eval_run_rows (run_id, position, row) VALUES (?, ?, ?)",
                (
                    (run.id, position, json.dumps(row.as_json(), ensure_ascii=False))
                    for position, row in enumerate(rows)
                ),
            )

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._lock:
            row = self._execute("SELECT record FROM eval_runs WHERE id = ?", (run_id,)).fetchone()
        return RunRecord.model_validate_json(row[0]) if row else None

    def update_run(self, run: RunRecord, *, only_unfinished: bool = True) -> bool:
        """Replace a run's record; with `only_unfinished`, only while it is queued or in
        progress (a run that was cancelled meanwhile stays cancelled). Whether it was written."""
        query = "UPDATE eval_runs SET status = ?, record = ? WHERE id = ?"
        if only_unfinished:
            query += f" AND status IN {_UNFINISHED}"
        with self._lock:
            cursor = self._execute(query, (run.status, run.model_dump_json(), run.id))
        return cursor.rowcount > 0

    def list_runs(
        self,
        eval_id: str,
        *,
        after: RunRecord | None,
        limit: int,
        order: Order,
        status: str | None,
    ) -> tuple[list[RunRecord], bool]:
        query, params = "SELECT record FROM eval_runs WHERE eval_id = ?", list[Any]([eval_id])
        if status is not None:
            query += " AND status = ?"
            params.append(status)
        if after is not None:
            query += f" AND (created_at, id) {'<' if order == 'desc' else '>'} (?, ?)"
            params += [after.created_at, after.id]
        direction = "DESC" if order == "desc" else "ASC"
        query += f" ORDER BY created_at {direction}, id {direction} LIMIT ?"
        rows = self._fetch(query, [*params, limit + 1])
        records = [RunRecord.model_validate_json(r[0]) for r in rows]
        return records[:limit], len(records) > limit

    def unfinished_runs(self) -> list[RunRecord]:
        """Runs queued or in progress, oldest first (the ones to resume at start)."""
        rows = self._fetch(
            f"SELECT record FROM eval_runs WHERE status IN {_UNFINISHED} ORDER BY created_at, id",
            [],
        )
        return [RunRecord.model_validate_json(r[0]) for r in rows]

    def delete_run(self, run_id: str) -> bool:
        with self._lock, self._transaction():
            return self._delete_run(run_id)

    def _delete_run(self, run_id: str) -> bool:
        self._execute("DELETE FROM eval_output_items WHERE run_id = ?", (run_id,))
        self._execute("DELETE FROM eval_run_rows WHERE run_id = ?", (run_id,))
        cursor = self._execute("DELETE FROM eval_runs WHERE id = ?", (run_id,))
        return cursor.rowcount > 0

    # --- rows and output items --------------------------------------------------------------

    def pending_rows(self, run_id: str) -> list[tuple[int, Row]]:
        """The run's rows that have no output item yet, in order."""
        rows = self._fetch(
            "SELECT r.position, r.row FROM eval_run_rows r WHERE r.run_id = ? AND NOT EXISTS "
            "(SELECT 1 FROM eval_output_items o WHERE o.run_id = r.run_id "
            "AND o.position = r.position) ORDER BY r.position",
            [run_id],
        )
        out: list[tuple[int, Row]] = []
        for position, raw in rows:
            data = json.loads(raw)
            out.append((int(position), Row(data["item"], data.get("sample"))))
        return out

    def record_output(self, output: OutputRecord) -> RunRecord | None:
        """Store `output` and count it in its run, in one transaction; nothing is written (None)
        once the run is finished (cancelled while the row was being sampled)."""
        with self._lock, self._transaction():
            # Locked, so two replicas counting outputs of one run never both read the old counts.
            row = self._execute(
                "SELECT record FROM eval_runs WHERE id = ?" + self.database.dialect.lock_row,
                (output.run_id,),
            ).fetchone()
            if row is None:
                return None
            run = RunRecord.model_validate_json(row[0])
            if run.status in TERMINAL:
                return None
            self._execute(
                "INSERT INTO eval_output_items (id, run_id, position, status, record) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, position) DO UPDATE SET "
                "id = excluded.id, status = excluded.status, record = excluded.record",
                (output.id, output.run_id, output.index, output.status, output.model_dump_json()),
            )
            run = run.counted(output)
            self._execute(
                "UPDATE eval_runs SET record = ? WHERE id = ?", (run.model_dump_json(), run.id)
            )
        return run

    def outputs(self, run_id: str) -> list[OutputRecord]:
        rows = self._fetch(
            "SELECT record FROM eval_output_items WHERE run_id = ? ORDER BY position", [run_id]
        )
        return [OutputRecord.model_validate_json(r[0]) for r in rows]

    def get_output(self, output_id: str) -> OutputRecord | None:
        with self._lock:
            row = self._execute(
                "SELECT record FROM eval_output_items WHERE id = ?", (output_id,)
            ).fetchone()
        return OutputRecord.model_validate_json(row[0]) if row else None

    def list_outputs(
        self,
        run_id: str,
        *,
        after: OutputRecord | None,
        limit: int,
        order: Order,
        status: str | None,
    ) -> tuple[list[OutputRecord], bool]:
        """A page of output items in row order."""
        query, params = "SELECT record FROM eval_output_items WHERE run_id = ?", list[Any]([run_id])
        if status is not None:
            query += " AND status = ?"
            params.append(status)
        if after is not None:
            query += f" AND position {'<' if order == 'desc' else '>'} ?"
            params.append(after.index)
        direction = "DESC" if order == "desc" else "ASC"
        query += f" ORDER BY position {direction} LIMIT ?"
        rows = self._fetch(query, [*params, limit + 1])
        records = [OutputRecord.model_validate_json(r[0]) for r in rows]
        return records[:limit], len(records) > limit

    # --- plumbing ---------------------------------------------------------------------------

    def _fetch(self, query: str, params: list[Any]) -> list[Any]:
        with self._lock:
            return list(self._execute(query, params).fetchall())

    def _transaction(self) -> AbstractContextManager[None]:
        return self.database.transaction()
