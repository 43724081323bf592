"""Leases: which process drives a piece of background work when several replicas could.

Gateway replicas share their database, and with it every unfinished fine-tuning job and eval
run; each piece of work must still be driven by exactly one of them at a time. A replica drives
one only while it holds its lease, a row of ``leases`` naming the holder and when the lease runs
out. The holder renews it every `Leases.renew_every` seconds; a replica that dies stops renewing,
and once the lease has run out another takes the work over and resumes it from its persisted
stage. Taking and renewing are one statement (``INSERT … ON CONFLICT … DO UPDATE … WHERE``), so two
replicas asking at once cannot both win.

Expiry is read from each replica's clock: replicas' clocks must agree to well within
`Leases.seconds` (NTP does). A replica that restarts under the same holder name (the gateway's
names itself by host and model cache, which one process holds at a time) takes its leases back at
once instead of waiting them out.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

from forgeline_kit.databases import Database, apply_schema, connect

__all__ = ["DEFAULT_LEASE_SECONDS", "Leases", "default_holder"]

#: How long a lease lasts without renewal: how soon work is taken over after its holder dies.
DEFAULT_LEASE_SECONDS = 15.0

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    name     TEXT PRIMARY KEY,
    holder   TEXT NOT NULL,
    expires  REAL NOT NULL
);
"""

_POSTGRESQL_MIGRATIONS = (
    (
        1,
        """
        CREATE TABLE leases (
            name     TEXT PRIMARY KEY,
            holder   TEXT NOT NULL,
            expires  DOUBLE PRECISION NOT NULL
        );
        """,
    ),
)


def default_holder() -> str:
    """A holder name unique to this process: its host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Leases:
    """The leases one holder takes in one database (a connection of its own, so a lease is
    never written inside another store's transaction). Calls are short and thread-safe."""

    def __init__(
        self,
        database: Database,
        holder: str,
        *,
        seconds: float = DEFAULT_LEASE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if seconds <= 0:
            raise ValueError(f"a lease must last a positive time, not {seconds} s")
        self.holder = holder
        self.seconds = seconds
        self._database = database
        self._clock = clock
        self._lock = threading.Lock()

    @classmethod
    def open(cls, url: str, holder: str, *, seconds: float = DEFAULT_LEASE_SECONDS) -> Leases:
        """The leases table in the database at ``url``, created or brought up to date."""
        database = connect(url)
        try:
            apply_schema(
                database, "leases", sqlite=_SQLITE_SCHEMA, postgresql=_POSTGRESQL_MIGRATIONS
            )
        except BaseException:
            database.close()
            raise
        return cls(database, holder, seconds=seconds)

    @property
    def renew_every(self) -> float:
        """How often a holder renews: three tries before its lease runs out."""
        return self.seconds / 3

    def acquire(self, name: str) -> bool:
        """Take or renew the lease on ``name``: True while this holder has it (it was free, had
        run out, or was already this holder's), False while another holds it."""
        now = self._clock()
        with self._lock:
            cursor = self._database.execute(
                "INSERT INTO leases (name, holder, expires) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                "expires = excluded.expires "
                "WHERE leases.holder = excluded.holder OR leases.expires < ?",
                (name, self.holder, now + self.seconds, now),
            )
            return cursor.rowcount == 1

    def release(self, name: str) -> None:
        """Give up the lease on ``name`` if this holder has it (another may take it at once)."""
        with self._lock:
            self._database.execute(
                "DELETE FROM leases WHERE name = ? AND holder = ?", (name, self.holder)
            )

    def holder_of(self, name: str) -> str | None:
        """Who holds the lease on ``name`` now; None when nobody does."""
        with self._lock:
            row = self._database.execute(
                "SELECT holder FROM leases WHERE name = ? AND expires >= ?", (name, self._clock())
            ).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        with self._lock:
            self._database.close()
