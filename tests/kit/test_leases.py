"""Leases decide which replica drives a piece of work: one holder at a time, renewed by it,
taken over once it runs out, given back at once when released; on SQLite and on a real
PostgreSQL server alike."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from postgres_server import PostgresServer

from forgeline_kit.leases import Leases
from forgeline_kit.sqlite import sqlite_url


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "leases.db")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


def _replicas(url: str, clock: Clock, *names: str) -> list[Leases]:
    opened = [Leases.open(url, name, seconds=10) for name in names]
    for leases in opened:
        leases._clock = clock  # one clock for all, moved by the test
    return opened


def test_one_holder_at_a_time_until_its_lease_runs_out(url: str) -> None:
    clock = Clock()
    a, b = _replicas(url, clock, "a", "b")

    assert a.acquire("job-1")
    assert not b.acquire("job-1")
    assert b.acquire("job-2")  # other work is free
    clock.now += 9
    assert a.acquire("job-1")  # renewed: runs out 10 s from now
    clock.now += 9
    assert not b.acquire("job-1")
    assert a.holder_of("job-1") == "a"
    clock.now += 2  # a stopped renewing (it died): the lease ran out
    assert a.holder_of("job-1") is None
    assert b.acquire("job-1")
    assert not a.acquire("job-1")  # a, back, finds it taken over
    for leases in (a, b):
        leases.close()


def test_a_released_lease_is_free_at_once_and_only_its_holder_releases_it(url: str) -> None:
    clock = Clock()
    a, b = _replicas(url, clock, "a", "b")
    assert a.acquire("job-1")

    b.release("job-1")  # not b's to give
    assert not b.acquire("job-1")
    a.release("job-1")
    assert b.acquire("job-1")
    for leases in (a, b):
        leases.close()


def test_a_holder_restarted_under_its_name_takes_its_leases_back(url: str) -> None:
    clock = Clock()
    (first,) = _replicas(url, clock, "host:/models")
    assert first.acquire("job-1")
    first.close()  # killed: nothing released

    (restarted,) = _replicas(url, clock, "host:/models")
    assert restarted.acquire("job-1")
    restarted.close()


def test_replicas_asking_at_once_give_the_lease_to_exactly_one(url: str) -> None:
    clock = Clock()
    replicas = _replicas(url, clock, *(f"r{n}" for n in range(6)))
    won: list[str] = []
    barrier = threading.Barrier(len(replicas))

    def ask(leases: Leases) -> None:
        barrier.wait()
        if leases.acquire("job-1"):
            won.append(leases.holder)

    threads = [threading.Thread(target=ask, args=(leases,)) for leases in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(won) == 1
    assert replicas[0].holder_of("job-1") == won[0]
    for leases in replicas:
        leases.close()
