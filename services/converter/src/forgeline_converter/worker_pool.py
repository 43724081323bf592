"""The service's side of its worker processes (``python -m forgeline_converter.worker_process``):
starting them, one spare kept warm (`WorkerPool`), and stopping one with every tool it started
(`stop_worker`).

Kept apart from the run that uses them (`tool_work`) because the pool outlives every run: the
service makes one at start and closes it at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from forgeline_kit.subprocesses import die_with_parent

__all__ = ["WorkerPool", "stop_worker"]

_WORKER_STOP_GRACE_S = 5.0


async def stop_worker(process: asyncio.subprocess.Process) -> None:
    """Stop the worker and every tool it started (they share its process group)."""
    if process.returncode is not None:
        return
    for sig, wait in ((signal.SIGTERM, _WORKER_STOP_GRACE_S), (signal.SIGKILL, 30.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            await asyncio.wait_for(process.wait(), wait)
            return
        except TimeoutError:
            continue


class WorkerPool:
    """Starts worker processes, keeping one spare that has already imported and loaded what a
    job needs (about a second of CPU), so a conversion's tools start as soon as its inputs are
    downloaded."""

    def __init__(self, llamacpp_home: Path | None) -> None:
        self._home = llamacpp_home
        self._spare: asyncio.subprocess.Process | None = None

    async def _spawn(self) -> asyncio.subprocess.Process:
        home = [str(self._home.absolute())] if self._home is not None else []
        return await asyncio.create_subprocess_exec(
            *die_with_parent(
                [sys.executable, "-m", "forgeline_converter.worker_process", "--stdin", *home]
            ),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group: one signal stops it and its tools
        )

    async def warm(self) -> None:
        """Have a spare worker waiting."""
        if self._spare is None or self._spare.returncode is not None:
            self._spare = await self._spawn()

    async def run(self, job_file: Path) -> asyncio.subprocess.Process:
        """A worker working on ``job_file`` (the spare when there is one); a new spare is
        started behind it."""
        process, self._spare = self._spare, None
        if process is None or process.returncode is not None:
            process = await self._spawn()
        try:
            await self._hand(process, job_file)
        except (BrokenPipeError, ConnectionResetError):
            # The spare died while waiting (killed from outside): use a fresh one.
            await stop_worker(process)
            process = await self._spawn()
            await self._hand(process, job_file)
        await self.warm()
        return process

    @staticmethod
    async def _hand(process: asyncio.subprocess.Process, job_file: Path) -> None:
        assert process.stdin is not None
        process.stdin.write(f"{job_file}\n".encode())
        await process.stdin.drain()
        process.stdin.close()

    async def close(self) -> None:
        """Stop the spare."""
        if self._spare is not None:
            await stop_worker(self._spare)
            self._spare = None
