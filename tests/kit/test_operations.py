"""The operations layer (forgeline_kit.operations): what every kind of long-running work relies
on — events numbered without gaps or repeats, idempotent creation, listings that resume from a
page token, and watches that resume after a sequence and wake on new events.

Every store test runs on both stores: SQLite (the embedded default) and a real PostgreSQL
server the session starts (``postgres`` fixture)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from postgres_server import PostgresServer

from forgeline_kit.errors import InvalidArgument, NotFound, Unavailable
from forgeline_kit.operations import (
    ChangeBell,
    OperationFailure,
    RecordInfo,
    SqliteOperationStore,
    decode_page_token,
    encode_page_token,
    watch_events,
)
from forgeline_kit.operations.page_tokens import decode_position
from forgeline_kit.operations.postgres_store import PostgresOperationStore, migrate
from forgeline_kit.operations.sql_store import SqlOperationStore


@dataclass
class Work:
    id: str
    request_id: str = ""
    state: str = "queued"
    created: float = 0.0
    owner: str = ""
    last_event: int = 0


@dataclass
class Note:
    text: str
    kind: str = "log"
    sequence: int = 0


@dataclass
class WorkCodec:
    kind: str = "work"

    def describe(self, record: Work) -> RecordInfo:
        return RecordInfo(
            id=record.id,
            request_id=record.request_id,
            created=record.created,
            state=record.state,
            terminal=record.state in ("succeeded", "failed"),
            labels={"owner": record.owner} if record.owner else {},
        )

    def dump_record(self, record: Work) -> bytes:
        return json.dumps(asdict(record)).encode()

    def load_record(self, data: bytes) -> Work:
        return Work(**json.loads(data))

    def dump_event(self, event: Note) -> bytes:
        return json.dumps(asdict(event)).encode()

    def load_event(self, data: bytes) -> Note:
        return Note(**json.loads(data))

    def event_kind(self, event: Note) -> str:
        return event.kind

    def number_event(self, event: Note, sequence: int) -> Note:
        event.sequence = sequence
        return event

    def number_record(self, record: Work, sequence: int) -> None:
        record.last_event = sequence


Store = SqlOperationStore[Work, Note]
#: Opens a store on the test's one database (a new connection each call).
Opener = Callable[..., Store]


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    opened: list[Store] = []
    if request.param == "sqlite":
        path = tmp_path / "state.db"

        def opener(kind: str = "work") -> Store:
            opened.append(SqliteOperationStore.open(path, WorkCodec(kind=kind)))
            return opened[-1]
    else:
        url = request.getfixturevalue("postgres").create_database()

        def opener(kind: str = "work") -> Store:
            opened.append(PostgresOperationStore.open(url, WorkCodec(kind=kind)))
            return opened[-1]

    yield opener
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Opener) -> Store:
    return open_store()


def test_a_record_and_its_events_are_numbered_in_order(
    store: Store,
) -> None:
    work, created = store.create(Work(id="w1", request_id="r1"), Note("accepted"))
    assert created
    assert work.last_event == 1
    for text in ("one", "two"):
        store.record(work, Note(text))
    assert [(e.sequence, e.text) for e in store.events("w1")] == [
        (1, "accepted"),
        (2, "one"),
        (3, "two"),
    ]
    assert store.get("w1") == Work(id="w1", request_id="r1", last_event=3)
    assert [e.text for e in store.events("w1", after=1, limit=1)] == ["one"]
    assert [e.text for e in store.events("w1", descending=True, limit=2)] == ["two", "one"]
    assert [e.text for e in store.events("w1", after=3, descending=True)] == ["one", "accepted"]


def test_an_event_appended_alone_takes_the_next_sequence_and_leaves_the_record(
    store: Store,
) -> None:
    work, _ = store.create(Work(id="w1", state="running"), Note("accepted"))
    assert store.append("w1", Note("progress")).sequence == 2
    store.record(work, Note("done"))
    assert [e.sequence for e in store.events("w1")] == [1, 2, 3]
    assert store.get("w1") == Work(id="w1", state="running", last_event=3)
    with pytest.raises(KeyError):
        store.append("missing", Note("lost"))


def test_a_repeated_request_id_finds_the_first_record_and_stores_nothing(
    store: Store,
) -> None:
    first, _ = store.create(Work(id="w1", request_id="same"), Note("accepted"))
    again, created = store.create(Work(id="w2", request_id="same"), Note("accepted"))
    assert not created
    assert again.id == "w1"
    assert store.get("w2") is None
    assert store.find_request("same") == first
    # Records without a request id never collide.
    store.create(Work(id="w3"))
    store.create(Work(id="w4"))
    assert store.get("w3") is not None
    assert store.get("w4") is not None


def test_writers_on_two_connections_never_share_a_sequence(open_store: Opener) -> None:
    """The sequence is given out inside the write's transaction, so two processes (or two
    replicas on one database) recording at once leave no gap and no duplicate."""
    stores = [open_store() for _ in range(2)]
    stores[0].create(Work(id="w1"))

    def write(store: Store, name: str) -> None:
        for n in range(50):
            work = store.get("w1")
            assert work is not None
            store.record(work, Note(f"{name}{n}"))

    threads = [
        threading.Thread(target=write, args=(store, name))
        for store, name in zip(stores, "ab", strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events = stores[0].events("w1", limit=1000)
    assert [e.sequence for e in events] == list(range(1, 101))
    assert stores[1].head("w1") is not None
    assert stores[1].head("w1").last_sequence == 100  # type: ignore[union-attr]


def test_listings_filter_and_resume_from_a_page_token(
    store: Store,
) -> None:
    for n in range(5):
        owner = "ann" if n % 2 == 0 else "bob"
        state = "succeeded" if n == 4 else "queued"
        store.create(Work(id=f"w{n}", created=n, owner=owner, state=state))
    first = store.page(limit=2)
    assert [w.id for w in first.records] == ["w4", "w3"]
    assert first.next_position is not None
    token = encode_page_token(first.next_position)
    second = store.page(after=decode_position(token), limit=2)
    third = store.page(after=second.next_position, limit=2)
    assert [w.id for w in second.records] == ["w2", "w1"]
    assert [w.id for w in third.records] == ["w0"]
    assert third.next_position is None
    after_w3 = store.page(after=store.position("w3"), limit=10)
    assert [w.id for w in after_w3.records] == ["w2", "w1", "w0"]
    assert store.position("missing") is None
    assert [w.id for w in store.page(labels={"owner": "ann"}).records] == ["w4", "w2", "w0"]
    assert [w.id for w in store.page(states=["succeeded"]).records] == ["w4"]
    assert [w.id for w in store.unfinished()] == ["w0", "w1", "w2", "w3"]
    assert store.count_by_state() == {"queued": 4, "succeeded": 1}


def test_a_page_token_not_issued_here_is_refused_with_what_to_pass() -> None:
    assert decode_page_token("") == ""
    assert decode_page_token(encode_page_token("models/a")) == "models/a"
    with pytest.raises(InvalidArgument, match="pass next_page_token as received"):
        decode_page_token("12")
    with pytest.raises(InvalidArgument, match="page_token"):
        decode_position(encode_page_token("not-a-number"))


def test_work_kept_in_an_older_layout_is_adopted_once(
    store: Store,
) -> None:
    record = Work(id="old", request_id="r-old", state="succeeded", last_event=2)
    events = [Note("accepted", sequence=1), Note("done", sequence=2)]
    store.adopt(record, events)
    store.adopt(record, events)
    assert store.find_request("r-old") == record
    assert [e.text for e in store.events("old")] == ["accepted", "done"]
    store.record(record, Note("later"))
    assert record.last_event == 3


def test_kinds_sharing_a_database_do_not_see_each_other(open_store: Opener) -> None:
    works = open_store()
    others = open_store("other")
    works.create(Work(id="w1", request_id="same"))
    other, created = others.create(Work(id="o1", request_id="same"))
    assert created
    assert other.id == "o1"
    assert [w.id for w in works.page().records] == ["w1"]
    assert others.get("w1") is None


def test_a_watch_resumes_after_a_sequence_and_wakes_on_new_events(
    store: Store,
) -> None:
    async def scenario() -> list[str]:
        bell = ChangeBell()
        work, _ = store.create(Work(id="w1"), Note("accepted"))
        store.record(work, Note("one"))
        seen: list[str] = []
        caught_up = asyncio.Event()

        async def follow() -> None:
            async for event in watch_events(
                store, bell, "w1", after=1, sequence_of=lambda e: e.sequence
            ):
                seen.append(event.text)
                caught_up.set()

        task = asyncio.create_task(follow())
        await asyncio.wait_for(caught_up.wait(), 5)
        assert seen == ["one"]
        store.record(work, Note("two"))
        bell.ring()
        work.state = "succeeded"
        store.record(work, Note("done"))
        bell.ring()
        await asyncio.wait_for(task, 5)
        return seen

    assert asyncio.run(scenario()) == ["one", "two", "done"]


def test_a_watch_filters_kinds_and_ends_on_a_closing_service(
    store: Store,
) -> None:
    async def scenario() -> tuple[list[str], str]:
        bell = ChangeBell()
        closing = False
        work, _ = store.create(Work(id="w1"), Note("accepted", kind="stage"))
        store.record(work, Note("noise"))
        seen: list[str] = []
        caught_up = asyncio.Event()

        async def follow() -> None:
            async for event in watch_events(
                store,
                bell,
                "w1",
                kinds=["stage"],
                event_kind=lambda e: e.kind,
                sequence_of=lambda e: e.sequence,
                closing=lambda: closing,
                closing_error=lambda seq: Unavailable(f"watch again after {seq}"),
            ):
                seen.append(event.text)
                caught_up.set()

        task = asyncio.create_task(follow())
        await asyncio.wait_for(caught_up.wait(), 5)
        closing = True
        bell.ring()
        with pytest.raises(Unavailable) as raised:
            await asyncio.wait_for(task, 5)
        return seen, str(raised.value)

    seen, message = asyncio.run(scenario())
    assert seen == ["accepted"]
    assert "after 2" in message
    with pytest.raises(NotFound):
        asyncio.run(anext(watch_events(store, ChangeBell(), "nope", sequence_of=lambda e: 0)))  # type: ignore[arg-type]


def test_a_failure_round_trips_through_the_contract() -> None:
    failure = OperationFailure("internal", "the worker was killed", retryable=True)
    again = OperationFailure.from_proto(failure.to_proto())
    assert (again.code, again.message, again.retryable) == (
        "internal",
        "the worker was killed",
        True,
    )
    assert str(again) == "the worker was killed"


def test_postgresql_migrations_apply_once_when_replicas_start_together(
    postgres: PostgresServer,
) -> None:
    """Replicas opening one new database at the same moment: each migration is applied by
    exactly one of them (the advisory lock), and every replica ends with the full schema."""
    import psycopg

    url = postgres.create_database()
    applied: list[list[int]] = []

    def start() -> None:
        with psycopg.connect(url, autocommit=True) as connection:
            applied.append(migrate(connection))

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(applied) == [[], [], [], [1]]
    store = PostgresOperationStore.open(url, WorkCodec())
    work, created = store.create(Work(id="w1"), Note("accepted"))
    assert created
    assert store.get("w1") == work
    store.close()
