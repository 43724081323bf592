"""Structured logging through the standard library.

Services log with plain `logging.getLogger(__name__)` and pass structured fields with ``extra=``::

    log.info("version registered", extra={"model": "tiny", "version": 3})

`configure_logging` decides how records look: ``text`` for people at a terminal, ``json`` (one
object per line: timestamp, level, logger, message, the extra fields, and the traceback when
there is one) for log collectors.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from forgeline_kit.settings import LogFormat

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "extra_fields"]

# Every attribute the stdlib puts on a LogRecord; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(
    logging.LogRecord("", logging.INFO, "", 0, "", None, None).__dict__
) | {"message", "asctime", "taskName"}


_HANDLER_NAME = "forgeline"


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller attached to `record` with ``extra=``."""
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRIBUTES}


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line; values JSON cannot hold are written as text."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        # Fixed keys win over extras of the same name, so every line parses the same way.
        entry |= {k: v for k, v in extra_fields(record).items() if k not in entry}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``timestamp LEVEL logger: message key=value ...`` with the traceback on following lines."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        extras = " ".join(f"{k}={v}" for k, v in extra_fields(record).items())
        if extras:
            line = f"{line} {extras}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


def configure_logging(
    level: str | int = "INFO", fmt: LogFormat | str = LogFormat.TEXT, stream: TextIO | None = None
) -> logging.Handler:
    """Send every logger's records to `stream` (stderr by default) in format `fmt`.

    Replaces the handler an earlier call installed, so calling it again reconfigures rather
    than duplicating lines; handlers installed by others (pytest's, for one) stay. Returns the
    installed handler.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if LogFormat(fmt) is LogFormat.JSON else TextFormatter())
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in root.handlers[:]:
        if old.get_name() == _HANDLER_NAME:
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(True)
    return handler
