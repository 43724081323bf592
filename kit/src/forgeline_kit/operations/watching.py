"""Watches of long-running work: the events after a sequence, then new ones as they are stored.

A watch reads the store, never an in-memory feed, so one started late, or resumed after a
disconnect with the last sequence it saw, sees exactly the history a live one saw. Between
reads it sleeps on a :class:`ChangeBell` that the service rings after every write.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from forgeline_kit.errors import NotFound
from forgeline_kit.operations.codec import E
from forgeline_kit.operations.store import OperationStore

__all__ = ["ChangeBell", "watch_events"]

_BATCH = 500


class ChangeBell:
    """Wakes every waiting watch when any operation changed. Used from the event loop only."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def ring(self) -> None:
        """Something changed: wake the watches waiting now."""
        event, self._event = self._event, asyncio.Event()
        event.set()

    def waiter(self) -> asyncio.Event:
        """What to wait on for the next ring; take it before reading, so no ring is lost."""
        return self._event


async def watch_events(
    store: OperationStore[Any, E],
    bell: ChangeBell,
    operation_id: str,
    *,
    after: int = 0,
    kinds: Sequence[str] = (),
    event_kind: Callable[[E], str] | None = None,
    sequence_of: Callable[[E], int],
    closing: Callable[[], bool] = lambda: False,
    closing_error: Callable[[int], Exception] | None = None,
) -> AsyncIterator[E]:
    """The operation's events after sequence ``after`` (those of ``kinds`` when given), then
    new ones as they are stored, until the operation ended and every event was read.

    When ``closing()`` turns true the watch ends, raising ``closing_error(last sequence)`` when
    given (so the caller knows where to resume), else simply ending.

    Raises:
        NotFound: there is no such operation.
    """
    if store.head(operation_id) is None:
        raise NotFound(f"{operation_id!r} does not exist", field="id")
    wanted = set(kinds)
    sequence = max(0, after)
    while True:
        waiter = bell.waiter()
        events = store.events(operation_id, after=sequence, limit=_BATCH)
        for event in events:
            sequence = sequence_of(event)
            if not wanted or (event_kind is not None and event_kind(event) in wanted):
                yield event
        head = store.head(operation_id)
        if head is None or (head.terminal and sequence >= head.last_sequence):
            return
        if closing():
            if closing_error is not None:
                raise closing_error(sequence)
            return
        if not events:
            await waiter.wait()
