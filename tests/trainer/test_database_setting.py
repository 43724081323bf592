"""Where the trainer keeps its job database: FORGELINE_TRAINER_DATABASE_URL, or jobs.db in the
state directory when it is empty (so STATE_DIR alone still moves both, as before it existed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from forgeline_kit.settings import SettingsError, load_settings
from forgeline_kit.sqlite import sqlite_url
from forgeline_proto.trainer.v1 import trainer_pb2 as pb
from forgeline_trainer.jobs.store import JobStore
from forgeline_trainer.settings import TrainerSettings

from .service_helpers import Stack


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("FORGELINE_TRAINER_"):
            monkeypatch.delenv(name)


def test_the_job_database_is_in_the_state_directory_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings(TrainerSettings).database_path == Path(".forgeline/trainer/jobs.db")

    monkeypatch.setenv("FORGELINE_TRAINER_STATE_DIR", "/srv/trainer")
    assert load_settings(TrainerSettings).database_path == Path("/srv/trainer/jobs.db")


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///db/jobs.db", Path("db/jobs.db")),
        ("sqlite:////srv/db/jobs.db", Path("/srv/db/jobs.db")),
    ],
)
def test_database_url_puts_it_elsewhere(
    monkeypatch: pytest.MonkeyPatch, url: str, path: Path
) -> None:
    monkeypatch.setenv("FORGELINE_TRAINER_STATE_DIR", "/srv/trainer")
    monkeypatch.setenv("FORGELINE_TRAINER_DATABASE_URL", url)

    assert load_settings(TrainerSettings).database_path == path


def test_a_postgresql_database_is_accepted_and_others_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FORGELINE_TRAINER_DATABASE_URL", "postgresql://db/forgeline")
    assert load_settings(TrainerSettings).jobs_database_url == "postgresql://db/forgeline"

    monkeypatch.setenv("FORGELINE_TRAINER_DATABASE_URL", "sqlite://db/forgeline")
    with pytest.raises(SettingsError) as refused:
        load_settings(TrainerSettings)
    assert refused.value.problems == [
        "FORGELINE_TRAINER_DATABASE_URL='sqlite://db/forgeline' is refused: a SQLite URL names "
        "a file, not a host: expected sqlite:///relative/path or sqlite:////absolute/path "
        "(or postgresql://USER:PASSWORD@HOST/DATABASE)"
    ]


@pytest.mark.timeout(120)
def test_a_trainer_finds_its_jobs_where_database_url_says(tmp_path: Path) -> None:
    database = tmp_path / "elsewhere" / "trainer.sqlite3"
    store = JobStore.open(sqlite_url(database))
    store.create(pb.Job(id="ftjob-kept", state=pb.JOB_STATE_SUCCEEDED, last_event_sequence=0))
    store.close()

    stack = Stack(tmp_path)
    try:
        trainer = stack.start_trainer(tmp_path / "trainer", database_url=sqlite_url(database))
        try:
            found = trainer.stub.GetJob(pb.GetJobRequest(job_id="ftjob-kept"))
        finally:
            trainer.stop()
    finally:
        stack.close()
    assert found.state == pb.JOB_STATE_SUCCEEDED
    assert not (tmp_path / "trainer" / "jobs.db").exists()
