"""Training progress is read from LLaMA-Factory's trainer_log.jsonl as it grows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forgeline_trainer.llamafactory.progress import TRAINER_LOG, ProgressReader, parse_duration

# Lines as LLaMA-Factory 0.9.5's LogCallback writes them (a DPO run, then an SFT run).
DPO_LINE = {
    "current_steps": 1,
    "total_steps": 2,
    "loss": 0.6931,
    "reward": 0.0,
    "accuracy": 0.0,
    "lr": 0.0001,
    "epoch": 0.5,
    "percentage": 50.0,
    "elapsed_time": "0:00:03",
    "remaining_time": "0:00:03",
}
SFT_LINE = {
    "current_steps": 40,
    "total_steps": 150,
    "loss": 0.0123,
    "lr": 4.5e-3,
    "epoch": 40.0,
    "percentage": 26.67,
    "elapsed_time": "1 day, 0:01:05",
    "remaining_time": "0:10:00",
    "throughput": 812.5,
    "total_tokens": 20480,
}


def append(log: Path, text: str) -> None:
    with log.open("a") as handle:
        handle.write(text)


def test_records_are_read_once_each_as_they_are_appended(tmp_path: Path) -> None:
    reader = ProgressReader(tmp_path)
    assert reader.read() == []  # no log yet: training has not logged

    log = tmp_path / TRAINER_LOG
    append(log, json.dumps(DPO_LINE) + "\n")
    first = reader.read()
    append(log, json.dumps(SFT_LINE) + "\n")
    second = reader.read()

    assert [record.step for record in first] == [1]
    assert first[0].loss == pytest.approx(0.6931)
    assert first[0].accuracy == 0.0
    assert [record.step for record in second] == [40]
    sft = second[0]
    assert (sft.total_steps, sft.learning_rate, sft.tokens_per_second) == (150, 4.5e-3, 812.5)
    assert sft.elapsed_s == 86465
    assert sft.remaining_s == 600
    assert reader.read() == []


def test_a_half_written_line_waits_for_its_end(tmp_path: Path) -> None:
    reader = ProgressReader(tmp_path)
    line = json.dumps(DPO_LINE)
    log = tmp_path / TRAINER_LOG
    append(log, line[:20])

    assert reader.read() == []
    append(log, line[20:] + "\n" + "not json\n")
    assert [record.step for record in reader.read()] == [1]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0:00:05", 5), ("2:03:04", 7384), ("2 days, 0:00:01", 172801), ("", None), ("soon", None)],
)
def test_durations_parse(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds
