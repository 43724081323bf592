"""One owning process per state directory.

A trainer, converter or gateway keeps work in flight in its state directory (job databases,
workspaces, running tools) and recovers it at start. Two processes on one directory would each
recover and drive the same work: two LLaMA-Factory runs writing one output directory, two
llama-servers per deployment. So the owner holds an exclusive ``flock`` on ``.owner.lock`` in the
directory for as long as it runs, and a second process refuses to start, naming the holder. The
kernel drops the lock when the holder dies however it dies, so a crash never leaves a stale lock
behind for an operator to delete.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

__all__ = ["LOCK_NAME", "StateDirInUseError", "StateDirLock", "hold_state_dir"]

LOCK_NAME: Final = ".owner.lock"


class StateDirInUseError(RuntimeError):
    """Another live process owns the directory; the message names it and what to do."""


@dataclass
class StateDirLock:
    """A held lock; it lasts until :meth:`release` or the end of the process."""

    path: Path
    _file: IO[str] | None

    def __enter__(self) -> StateDirLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def release(self) -> None:
        """Let another process own the directory (closing the file drops the ``flock``)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def hold_state_dir(directory: Path, owner: str) -> StateDirLock:
    """Own ``directory`` (made if missing) for ``owner`` (``forgeline-trainer``, say), for as
    long as the returned lock is referenced (collecting it closes the file, dropping the lock).

    Raises:
        StateDirInUseError: a live process holds it; the message says which (pid, host, since).
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    # Opened without truncating: the holder's record must survive a failed attempt to read it.
    handle = path.open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = _describe(handle.read())
        handle.close()
        raise StateDirInUseError(
            f"{directory} is in use by {holder}; stop that process first, or give this one a "
            "state directory of its own"
        ) from None
    handle.seek(0)
    handle.truncate()
    record = {
        "owner": owner,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    handle.write(json.dumps(record) + "\n")
    handle.flush()
    return StateDirLock(path=path, _file=handle)


def _describe(text: str) -> str:
    try:
        record = json.loads(text)
        return (
            f"{record['owner']} (pid {record['pid']} on {record['host']}, since {record['since']})"
        )
    except (ValueError, KeyError, TypeError):
        return "another process (its lock record is unreadable)"
