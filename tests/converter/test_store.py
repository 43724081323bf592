"""The converter's store: conversions kept by an earlier release survive the upgrade to the
operations layer, with their events and their place in listings."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from postgres_server import PostgresServer

from forgeline_converter.store import open_store
from forgeline_kit.sqlite import sqlite_url
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.converter.v1 import converter_pb2 as pb

#: The layout the converter kept conversions in before the operations layer.
EARLIER_SCHEMA = """
CREATE TABLE conversions (
    id TEXT PRIMARY KEY, request_id TEXT NOT NULL UNIQUE, created REAL NOT NULL,
    state INTEGER NOT NULL, source_model TEXT NOT NULL, source_version INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE events (
    conversion_id TEXT NOT NULL, sequence INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (conversion_id, sequence)
);
"""


def _conversion(number: int, state: pb.ConversionState.ValueType) -> pb.Conversion:
    conversion = pb.Conversion(
        id=f"cv-{number}",
        request_id=f"req-{number}",
        state=state,
        last_event_sequence=2,
        spec=pb.ConversionSpec(
            model=pb.ModelConversion(
                source=common_pb2.VersionRef(model="acme/base", version=number)
            )
        ),
    )
    conversion.create_time.FromSeconds(1_700_000_000 + number)
    return conversion


def test_conversions_kept_in_the_earlier_layout_are_adopted(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.executescript(EARLIER_SCHEMA)
    for number, state in ((1, pb.CONVERSION_STATE_SUCCEEDED), (2, pb.CONVERSION_STATE_QUANTIZING)):
        conversion = _conversion(number, state)
        db.execute(
            "INSERT INTO conversions VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                conversion.id,
                conversion.request_id,
                1_700_000_000 + number,
                state,
                "acme/base",
                number,
                conversion.SerializeToString(),
            ),
        )
        for sequence, text in ((1, "accepted"), (2, "working")):
            event = pb.ConversionEvent(
                conversion_id=conversion.id,
                sequence=sequence,
                log=common_pb2.LogLine(text=text),
            )
            db.execute(
                "INSERT INTO events VALUES (?, ?, ?)",
                (conversion.id, sequence, event.SerializeToString()),
            )
    db.commit()
    db.close()

    store = open_store(sqlite_url(path))
    assert store.find_request("req-1") == _conversion(1, pb.CONVERSION_STATE_SUCCEEDED)
    assert [e.log.text for e in store.events("cv-2")] == ["accepted", "working"]
    assert [c.id for c in store.page().records] == ["cv-2", "cv-1"]
    assert [c.id for c in store.page(labels={"source_version": "1"}).records] == ["cv-1"]
    assert [c.id for c in store.unfinished()] == ["cv-2"]
    running = store.get("cv-2")
    assert running is not None
    store.record(running, pb.ConversionEvent(conversion_id="cv-2"))
    assert running.last_event_sequence == 3
    store.close()

    # Opened again, nothing is adopted twice and the earlier tables are gone.
    store = open_store(sqlite_url(path))
    assert len(store.events("cv-2")) == 3
    with closing(sqlite3.connect(path)) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "conversions" not in tables


def test_conversions_keep_on_postgresql(postgres: PostgresServer) -> None:
    url = postgres.create_database()
    store = open_store(url)
    conversion, created = store.create(
        _conversion(1, pb.CONVERSION_STATE_QUEUED), pb.ConversionEvent(conversion_id="cv-1")
    )
    assert created
    store.record(conversion, pb.ConversionEvent(conversion_id="cv-1"))
    store.close()

    reopened = open_store(url)
    assert reopened.get("cv-1") == conversion
    assert [e.sequence for e in reopened.events("cv-1")] == [1, 2]
    assert [c.id for c in reopened.page(labels={"source_model": "acme/base"}).records] == ["cv-1"]
    assert [c.id for c in reopened.unfinished()] == ["cv-1"]
    reopened.close()
