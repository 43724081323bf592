"""Running the echo service as a real process, and reading what it reports.

Readiness is never guessed: the process logs the ports it bound (one JSON line) once it serves,
and every wait here polls a real signal against a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

ECHO_SERVICE = Path(__file__).with_name("echo_service.py")
START_TIMEOUT = 60.0  # generous: the machine is small and shared


class ServiceProcess:
    """The echo service in a subprocess, its stderr collected line by line."""

    def __init__(self, settings: Mapping[str, str] | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FORGELINE_ECHO_")}
        env |= {
            "FORGELINE_ECHO_GRPC_PORT": "0",
            "FORGELINE_ECHO_METRICS_PORT": "0",
            "FORGELINE_ECHO_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }
        env |= dict(settings or {})
        self.process = subprocess.Popen(  # noqa: S603 (a fixed argument list, no shell)
            [sys.executable, str(ECHO_SERVICE)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.grpc_port = 0
        self.metrics_port = 0

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def records(self, *, strict: bool = True) -> list[dict[str, Any]]:
        """The JSON log records written so far. Strict: every line must be one; otherwise lines
        that are not (gRPC core writes its own errors to stderr) are skipped."""
        with self._changed:
            if strict:
                return [json.loads(line) for line in self.lines]
            return [r for r in map(_parse, self.lines) if r is not None]

    def wait_for_record(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = START_TIMEOUT
    ) -> dict[str, Any]:
        """The first JSON record matching `predicate`, waiting for it up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    record = _parse(line)
                    if record is not None and predicate(record):
                        return record
                seen = len(self.lines)
                finished = self.process.poll() is not None and not self._reader.is_alive()
                remaining = deadline - time.monotonic()
                if finished or remaining <= 0:
                    raise AssertionError(
                        f"no matching log record within {timeout} s "
                        f"(exit code {self.process.poll()}); output:\n" + "\n".join(self.lines)
                    )
                self._changed.wait(remaining)

    def wait_serving(self) -> ServiceProcess:
        """Wait for the line that reports the bound ports; returns self."""
        record = self.wait_for_record(lambda r: "grpc_port" in r)
        self.grpc_port = int(record["grpc_port"])
        self.metrics_port = int(record["metrics_port"])
        return self

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """The exit code, waiting up to `timeout` seconds for it."""
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        return code

    def stop(self) -> None:
        """End the process whatever its state (test teardown)."""
        if self.process.poll() is None:
            self.process.kill()
        self.wait(START_TIMEOUT)


def _parse(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A /metrics scrape as {(sample name, labels): value}."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    return frozenset(pairs.items())
