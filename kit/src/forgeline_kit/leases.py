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

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Self

from forgeline_kit.databases import AsyncDatabaseStore, Database, apply_schema, connect

__all__ = ["DEFAULT_LEASE_SECONDS", "LeasedStore", "LeasedTasks", "Leases", "default_holder"]

log = logging.getLogger(__name__)

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


class LeasedTasks:
    """Background work of one kind, each piece run in a task of its own only while this holder
    has its lease: a fine-tuning job's pipeline, an eval run.

    Every `Leases.renew_every` seconds (`round`) it renews the leases of its tasks (a task whose
    lease another holder took is stopped: that holder runs the work now), and starts a task for
    each unfinished piece whose lease is free or ran out (a holder that died, or this one's
    previous run). A task that ends, or is stopped by `close`, gives its lease up at once.
    """

    def __init__(
        self,
        leases: Leases,
        kind: str,
        *,
        run: Callable[[str], Coroutine[Any, Any, None]],
        unfinished: Callable[[], Awaitable[Iterable[str]]],
        on_round: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """
        Args:
            leases: this holder's leases; each piece's lease is named ``KIND:ID``.
            kind: what the work is, in lease names and logs (``fine_tuning_job``).
            run: does one piece of work until it ends (or its task is cancelled).
            unfinished: the ids of the pieces not finished, oldest first.
            on_round: called at the end of every round (say, to act on requests made to
                whichever holder runs a piece).
        """
        self.leases = leases
        self.kind = kind
        self._run = run
        self._unfinished = unfinished
        self._on_round = on_round
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._keeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Take up the unfinished work nobody runs, then keep the leases (in the background)."""
        await self.round()
        self._keeper = asyncio.create_task(self._keep(), name=f"{self.kind} leases")

    async def close(self) -> None:
        """Stop every task here, giving its lease up (the next holder need not wait it out)."""
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def running(self, work_id: str) -> asyncio.Task[None] | None:
        """The task running `work_id` here, if this holder runs it."""
        return self._tasks.get(work_id)

    async def take(self, work_id: str) -> bool:
        """Whether this holder runs `work_id` or could take its lease now (nobody else holds
        it); the lease is then this holder's."""
        return work_id in self._tasks or await self._acquire(work_id)

    def spawn(self, work_id: str) -> asyncio.Task[None]:
        """Run `work_id` in a task of its own; the caller holds its lease (`take`)."""
        task = asyncio.create_task(self._guarded(work_id), name=f"{self.kind} {work_id}")
        self._tasks[work_id] = task
        task.add_done_callback(
            lambda done: self._tasks.pop(work_id) if self._tasks.get(work_id) is done else None
        )
        return task

    async def stop(self, work_id: str, *, release: bool = False) -> None:
        """Stop running `work_id` here, and wait until it has; its lease stays this holder's
        unless to `release` it (the work ended, say cancelled)."""
        task = self._tasks.pop(work_id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if release:
            await asyncio.to_thread(self.leases.release, self._name(work_id))

    async def round(self) -> None:
        """Renew, take over, and `on_round`: one pass."""
        for work_id in list(self._tasks):
            if not await self._acquire(work_id):
                log.warning(
                    "another holder took the work over; it stops here",
                    extra={"kind": self.kind, "id": work_id, "holder": self.leases.holder},
                )
                task = self._tasks.pop(work_id, None)
                if task is not None:
                    task.cancel()
        for work_id in await self._unfinished():
            if work_id not in self._tasks and await self._acquire(work_id):
                log.info("taking up work", extra={"kind": self.kind, "id": work_id})
                self.spawn(work_id)
        if self._on_round is not None:
            await self._on_round()

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.leases.renew_every)
            try:
                await self.round()
            except Exception:  # the database may be back on the next pass
                log.warning("could not renew the leases", extra={"kind": self.kind}, exc_info=True)

    async def _guarded(self, work_id: str) -> None:
        try:
            await self._run(work_id)
        finally:
            if self._tasks.get(work_id) is asyncio.current_task():
                # Ended or closed here (not stopped, not taken over): free the lease now.
                name = self._name(work_id)
                await asyncio.shield(asyncio.to_thread(self.leases.release, name))

    async def _acquire(self, work_id: str) -> bool:
        return await asyncio.to_thread(self.leases.acquire, self._name(work_id))

    def _name(self, work_id: str) -> str:
        return f"{self.kind}:{work_id}"


class LeasedStore(AsyncDatabaseStore):
    """A store of background work that replicas share: its tables, and this replica's `leases`
    on a connection of their own (a lease is never written inside the store's transactions)."""

    def __init__(self, database: Database, leases: Leases) -> None:
        super().__init__(database)
        self.leases = leases

    @classmethod
    def open(
        cls, url: str, *, holder: str = "", lease_seconds: float = DEFAULT_LEASE_SECONDS
    ) -> Self:
        """The store in the database at `url`, with the leases of `holder` (default: this
        process) lasting `lease_seconds`."""
        database = cls.open_database(url)
        try:
            leases = Leases.open(url, holder or default_holder(), seconds=lease_seconds)
        except BaseException:
            database.close()
            raise
        return cls(database, leases)

    def close(self) -> None:
        self.leases.close()
        super().close()
