"""How one kind of long-running work is stored: the part of the operations layer a service
writes for its own records and events (protobuf messages, pydantic models, anything that
serialises to bytes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

__all__ = ["E", "OperationCodec", "R", "RecordInfo"]

R = TypeVar("R")
E = TypeVar("E")


@dataclass(frozen=True)
class RecordInfo:
    """What the store indexes of a record: the columns it filters, orders and resumes on.

    ``labels`` are set when the record is created and never change: the filters a listing takes
    (a conversion's source model, a job's metadata).
    """

    id: str
    request_id: str
    created: float
    state: str
    terminal: bool
    labels: Mapping[str, str] = field(default_factory=dict)


class OperationCodec(Protocol[R, E]):
    """One kind's records and events as the store keeps them."""

    #: The kind's name; several kinds may share one database.
    kind: str

    def describe(self, record: R) -> RecordInfo:
        """The indexed part of ``record``."""
        ...

    def dump_record(self, record: R) -> bytes: ...

    def load_record(self, data: bytes) -> R: ...

    def dump_event(self, event: E) -> bytes: ...

    def load_event(self, data: bytes) -> E: ...

    def event_kind(self, event: E) -> str:
        """The event's kind, which listings and watches may filter on."""
        ...

    def number_event(self, event: E, sequence: int) -> E:
        """``event`` stamped with its ``sequence``, before it is written: the same object
        changed (protobuf) or a copy (frozen models)."""
        ...

    def number_record(self, record: R, sequence: int) -> None:
        """Stamp ``record`` with its newest event's ``sequence``, where records carry one."""
        ...
