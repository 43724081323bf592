"""The registry as a real process (``python -m forgeline_registry``), for the crash test and the
CLI tests. Readiness is the log line reporting the bound port, never a sleep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping

START_TIMEOUT = 60.0


class RegistryProcess:
    """A registry subprocess logging JSON to a pipe that a thread collects."""

    def __init__(self, env: Mapping[str, str]) -> None:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("FORGELINE_")}
        environment |= {
            "FORGELINE_REGISTRY_GRPC_PORT": "0",
            "FORGELINE_REGISTRY_METRICS_PORT": "0",
            "FORGELINE_REGISTRY_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }
        environment |= dict(env)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "forgeline_registry"],
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = 0

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_serving(self) -> RegistryProcess:
        """Wait for the line that reports the gRPC port; returns self."""
        deadline = time.monotonic() + START_TIMEOUT
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(record, dict) and "grpc_port" in record:
                        self.port = int(record["grpc_port"])
                        return self
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if self.process.poll() is not None or remaining <= 0:
                    raise AssertionError("the registry did not start:\n" + "\n".join(self.lines))
                self._changed.wait(min(remaining, 1.0))

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: no drain, no cleanup, as in a crash."""
        self.process.kill()
        self.process.wait(START_TIMEOUT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(START_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(START_TIMEOUT)
        self._reader.join(START_TIMEOUT)
