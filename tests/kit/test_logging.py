"""Structured logs: JSON one object per line when asked, readable text otherwise."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from forgeline_kit.logging import configure_logging

from .harness import ServiceProcess


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logger")
def test_json_lines_carry_the_fields_and_the_extras() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    log = logging.getLogger("forgeline.test")

    log.debug("not shown")
    log.info("version %s registered", 3, extra={"model": "tiny", "size": 1024})
    try:
        raise ValueError("bad digest")
    except ValueError:
        log.exception("upload failed", extra={"path": "/tmp/x\ny"})

    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["level"] == "INFO"
    assert first["logger"] == "forgeline.test"
    assert first["message"] == "version 3 registered"
    assert (first["model"], first["size"]) == ("tiny", 1024)
    assert first["timestamp"].endswith("+00:00")
    assert second["level"] == "ERROR"
    assert second["path"] == "/tmp/x\ny"
    assert "ValueError: bad digest" in second["exception"]


@pytest.mark.usefixtures("restore_root_logger")
def test_text_lines_are_for_people() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "text", stream=stream)
    configure_logging("INFO", "text", stream=stream)  # reconfiguring does not duplicate lines

    logging.getLogger("forgeline.test").warning("disk low", extra={"free_gb": 3})

    (line,) = stream.getvalue().splitlines()
    assert line.endswith("WARNING forgeline.test: disk low free_gb=3")


def test_a_service_logs_only_json_lines(echo: ServiceProcess) -> None:
    records = echo.records()  # raises if any line is not JSON
    assert records
    assert {"timestamp", "level", "logger", "message"} <= set(records[0])
