"""What the commands check before talking to any service, and how a followed job is drawn."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from forgeline_cli.console import one_line
from forgeline_cli.jobs_commands import JobFollower
from forgeline_cli.train_commands import UsageError, check_data
from forgeline_kit.datasets import DatasetFormat
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.trainer.v1 import trainer_pb2 as pb

from .conftest import forgeline

GOOD = [{"instruction": "Say hi.", "input": "", "output": "Hi."}]


def _files(tmp_path: Path, records: object = GOOD) -> Path:
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(records))
    return path


def test_data_files_are_matched_to_the_yaml_and_validated(tmp_path: Path) -> None:
    data = _files(tmp_path)
    (checked,) = check_data("dataset: facts\nstage: sft\n", [f"facts={data}"])
    assert checked.spec.format is DatasetFormat.ALPACA
    assert checked.records == 1
    assert not checked.evaluation


def test_an_evaluation_dataset_is_marked(tmp_path: Path) -> None:
    data = _files(tmp_path)
    held = tmp_path / "held.json"
    held.write_text(json.dumps(GOOD))
    checked = check_data("dataset: facts\neval_dataset: held\n", [f"facts={data}", f"held={held}"])
    assert [(c.spec.name, c.evaluation) for c in checked] == [("facts", False), ("held", True)]


def test_pretraining_text_is_taken_as_such_for_stage_pt(tmp_path: Path) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text("One document.\nAnother one.\n")
    (checked,) = check_data("stage: pt\ndataset: corpus\n", [f"corpus={text}"])
    assert checked.spec.format is DatasetFormat.PRETRAIN_TEXT
    assert checked.records == 2


@pytest.mark.parametrize(
    ("yaml_text", "pairs", "message"),
    [
        ("dataset: facts\n", ["facts"], "use NAME=PATH"),
        ("dataset: facts\n", ["facts=/nonexistent.json"], "no such file /nonexistent.json"),
        ("dataset: facts\n", ["other=x.json"], "dataset 'facts' but no --data facts=PATH"),
        ("stage: sft\n", [], "names no 'dataset'"),
        ("dataset: facts\n", ["facts=a.json", "more=b.json"], "--data more is not used"),
    ],
)
def test_bad_data_options_say_what_to_fix(
    yaml_text: str, pairs: list[str], message: str, tmp_path: Path
) -> None:
    given = [p.replace("=a.json", f"={_files(tmp_path)}") for p in pairs]
    with pytest.raises(UsageError, match=message):
        check_data(yaml_text, given)


def test_a_malformed_version_reference_is_refused_before_converting() -> None:
    result = forgeline("convert", "tiny-llama:x", "--to", "q8_0", "--converter", "127.0.0.1:1")
    assert result.code == 2
    assert "the version after ':' must be a positive number" in result.err


def test_multi_line_service_messages_become_one_line() -> None:
    text = "dataset 'a' has 2 bad record(s):\nrecord 1: 'output' is missing\nrecord 3: bad"
    assert one_line(text) == (
        "dataset 'a' has 2 bad record(s): record 1: 'output' is missing; record 3: bad"
    )


class _FakeTrainer:
    """WatchJob and GetJob of a trainer whose job trains two steps and succeeds."""

    def __init__(self) -> None:
        self.events = [
            pb.JobEvent(
                message="Training started",
                stage_change=pb.StageChange(
                    previous_state=pb.JOB_STATE_VALIDATING, state=pb.JOB_STATE_TRAINING
                ),
            ),
            pb.JobEvent(message="log", log=common_pb2.LogLine(text="llamafactory output")),
            *[
                pb.JobEvent(
                    message=f"Step {step}/2",
                    metrics=pb.TrainingMetrics(
                        step=step, total_steps=2, epoch=step / 2, loss=1.0 / step
                    ),
                )
                for step in (1, 2)
            ],
            pb.JobEvent(
                message="done",
                stage_change=pb.StageChange(
                    previous_state=pb.JOB_STATE_TRAINING, state=pb.JOB_STATE_SUCCEEDED
                ),
            ),
        ]

    async def _stream(self) -> AsyncIterator[pb.JobEvent]:
        for event in self.events:
            yield event

    def WatchJob(self, request: pb.WatchJobRequest) -> AsyncIterator[pb.JobEvent]:  # noqa: N802
        return self._stream()

    async def GetJob(self, request: pb.GetJobRequest) -> pb.Job:  # noqa: N802
        return pb.Job(id=request.job_id, state=pb.JOB_STATE_SUCCEEDED)


def test_following_with_a_bar_shows_steps_and_loss_and_prints_stages() -> None:
    out, err = io.StringIO(), io.StringIO()
    stub: Any = _FakeTrainer()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        job = asyncio.run(JobFollower(stub, "ftjob-1", bar=True, logs=False).follow())
    assert job.state == pb.JOB_STATE_SUCCEEDED
    assert "[training] Training started" in out.getvalue()
    assert "[succeeded] done" in out.getvalue()
    assert "llamafactory output" not in out.getvalue()
    assert "2/2" in err.getvalue()
    assert "loss=0.5000" in err.getvalue()
