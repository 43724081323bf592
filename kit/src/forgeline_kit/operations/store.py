"""The storage interface of long-running work: what a service may ask of it, whatever holds it.

SQLite (:mod:`.sqlite_store`) is the embedded default; a PostgreSQL store is the same interface
over the same three tables, so callers never change when the database does.

The contract every implementation keeps:

- a record and the event that changed it are written in one transaction, and the event's
  sequence is the record's previous newest plus one, assigned inside that transaction: two
  writers never give out one sequence, and a watcher resuming after sequence N misses nothing;
- creation is idempotent: a second create with a known ``request_id`` stores nothing and
  returns the record the first one stored;
- listings are newest first by creation, resumed from an integer position (the page token's);
- a record's ``labels`` (set at creation) are what listings filter on besides the state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol

from forgeline_kit.operations.codec import E, R

__all__ = ["Head", "OperationStore", "Page"]


@dataclass(frozen=True)
class Page(Generic[R]):
    """One page of a listing, and the position the next one starts after (None: no more)."""

    records: list[R]
    next_position: int | None


@dataclass(frozen=True)
class Head:
    """Where an operation stands, without decoding it: what a watch checks between events."""

    terminal: bool
    last_sequence: int


class OperationStore(Protocol[R, E]):
    """Records of one kind of work and their events. Every call is short and synchronous and
    safe from any thread; asyncio callers may run them on a worker thread."""

    def create(self, record: R, first_event: E | None = None) -> tuple[R, bool]:
        """Store a new record (with its first event, numbered 1); or, when its ``request_id``
        is already known, the record stored under it. The flag says whether this call
        created it."""
        ...

    def record(self, record: R, event: E) -> E:
        """Store ``event`` as the record's next one and ``record`` as changed by it."""
        ...

    def append(self, operation_id: str, event: E) -> E:
        """Store ``event`` as the operation's next one, the record unchanged (work whose record
        does not carry its newest sequence)."""
        ...

    def save(self, record: R) -> None:
        """Store ``record`` without an event (progress that watchers learn from events)."""
        ...

    def get(self, operation_id: str) -> R | None: ...

    def find_request(self, request_id: str) -> R | None:
        """The record created for ``request_id``, if any."""
        ...

    def head(self, operation_id: str) -> Head | None: ...

    def position(self, operation_id: str) -> int | None:
        """The operation's place in listings: a listing from after it starts with the next
        older one (APIs whose cursor is the last id seen)."""
        ...

    def events(
        self,
        operation_id: str,
        *,
        after: int = 0,
        limit: int = 500,
        descending: bool = False,
        kinds: Sequence[str] = (),
    ) -> list[E]:
        """Up to ``limit`` events after sequence ``after`` in sequence order; ``descending``
        lists newest first, those below ``after`` (0: from the newest)."""
        ...

    def page(
        self,
        *,
        after: int | None = None,
        states: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        limit: int = 50,
    ) -> Page[R]:
        """Records newest first, from after position ``after`` (None: the newest), in one of
        ``states`` when given, carrying every label of ``labels``."""
        ...

    def unfinished(self) -> list[R]:
        """Records not in a terminal state, oldest first: the work to resume at start."""
        ...

    def count_by_state(self) -> dict[str, int]:
        """How many records are in each state (states without records left out)."""
        ...

    def adopt(self, record: R, events: Sequence[E]) -> None:
        """Store a record with the events it already has (numbered), as they are: how a
        service moves work kept in an older layout into this one."""
        ...

    def close(self) -> None: ...
