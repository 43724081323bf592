"""Running one ``llama-server`` process asynchronously: start it on a free loopback port, wait
until its ``/health`` says it serves, keep the tail of its log, stop it. Its command line is the
kit's :class:`~forgeline_kit.llamacpp.server.LlamaServerOptions`, shared with the synchronous
process the demo and tests use.

Readiness is the server's own signal (``GET /health`` answers 200 once the model is loaded, 503
while loading); a process that exits first is reported with the last lines it logged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from forgeline_gateway.backends.base import is_readable_file
from forgeline_kit.errors import FailedPrecondition
from forgeline_kit.llamacpp.server import LlamaServerOptions, free_port
from forgeline_kit.subprocesses import die_with_parent

__all__ = ["LlamaServerProcess"]

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 400
STOP_GRACE_SECONDS = 10.0
# A port picked free can be taken before llama-server binds it; try again on another.
START_ATTEMPTS = 3


@dataclass
class LlamaServerProcess:
    """One started llama-server; `url` is where it serves OpenAI's API (under ``/v1``)."""

    options: LlamaServerOptions
    binary: Path
    host: str = "127.0.0.1"
    port: int = 0
    process: asyncio.subprocess.Process | None = None
    log_tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=LOG_TAIL_LINES)
    )
    _reader: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def start(self, within: float) -> None:
        """Start the server and wait until it reports healthy.

        Raises:
            FailedPrecondition: the model file is missing, or the server exited or did not
                become healthy within `within` seconds (the message quotes its last log line).
        """
        files = [("gguf", self.options.model), *(("lora", p) for p in self.options.lora_adapters)]
        for param, path in files:
            if not is_readable_file(path):
                raise FailedPrecondition(
                    f"the GGUF file {path} does not exist on the gateway host", field=param
                )
        last: FailedPrecondition | None = None
        for _ in range(START_ATTEMPTS):
            self.port = free_port(self.host)
            try:
                await self._spawn_and_wait(within)
                return
            except FailedPrecondition as error:
                last = error
                await self.stop()
                if "bind" not in "\n".join(self.log_tail).lower():
                    break
        assert last is not None
        raise last

    async def _spawn_and_wait(self, within: float) -> None:
        self.log_tail.clear()
        self.process = await asyncio.create_subprocess_exec(
            # A gateway killed outright leaves no server behind: SIGKILL, since a llama-server
            # was seen hanging in its graceful shutdown after SIGTERM (and it starts no children
            # that would need one).
            *die_with_parent(
                self.options.arguments(self.binary, self.host, self.port), signal.SIGKILL
            ),
            env=self.options.environment(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # a signal to the gateway's group does not hit it twice
        )
        self._reader = asyncio.create_task(self._read_log(self.process))
        log.info(
            "llama-server starting",
            extra={"model": self.options.name, "pid": self.process.pid, "port": self.port},
        )
        try:
            await asyncio.wait_for(self._wait_healthy(), within)
        except TimeoutError:
            raise FailedPrecondition(
                f"llama-server for '{self.options.name}' did not become healthy within "
                f"{within:.0f} s; last log line: {self._last_line()}"
            ) from None

    async def _wait_healthy(self) -> None:
        assert self.process is not None
        async with httpx.AsyncClient(timeout=2.0) as client:
            delay = 0.05
            while True:
                if self.process.returncode is not None:
                    raise FailedPrecondition(
                        f"llama-server for '{self.options.name}' exited with status "
                        f"{self.process.returncode} while starting: {self._last_line()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.get(f"{self.url}/health")
                    if response.status_code == 200:
                        log.info("llama-server healthy", extra={"model": self.options.name})
                        return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    async def _read_log(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        async for raw in process.stderr:
            self.log_tail.append(raw.decode(errors="replace").rstrip())

    def _last_line(self) -> str:
        lines = [line for line in self.log_tail if line.strip()]
        return lines[-1] if lines else "(it logged nothing)"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop the server: SIGTERM, then SIGKILL after `grace` seconds."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader, 5)
            self._reader = None
        log.info("llama-server stopped", extra={"model": self.options.name, "pid": process.pid})
