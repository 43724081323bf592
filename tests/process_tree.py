"""Which processes descend from a process, read from Linux's /proc, for tests that check that
nothing a process started outlives it."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path


def _parents() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it ended while we looked
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    return parents


def descendants(pid: int) -> set[int]:
    """Every live (not zombie) process below ``pid``."""
    parents = _parents()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        children = {child for child, parent in parents.items() if parent in frontier}
        frontier = children - found
        found |= children
    return found


def command_line(pid: int) -> str:
    """The process's command line, or "" once it is gone."""
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent counts as gone)."""
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pids: set[int], within: float) -> set[int]:
    """Wait up to ``within`` seconds for every one of ``pids`` to end; those still running."""
    deadline = time.monotonic() + within
    left = {pid for pid in pids if alive(pid)}
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = {pid for pid in left if alive(pid)}
    return left


def kill_all(pids: set[int]) -> None:
    """SIGKILL whatever of ``pids`` still runs (a failing test's clean-up)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)


def kill_busy_converter_worker(root_pid: int, within: float) -> int | None:
    """SIGKILL a converter worker (``python -m forgeline_converter.worker_process``) below
    ``root_pid`` while it runs a llama.cpp tool, mid-conversion, as the OOM killer would; its pid,
    or None if no tool ran within ``within`` seconds. (The converter also keeps an idle spare
    worker, which has no child.)"""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        below = descendants(root_pid)
        for pid in below:
            if "forgeline_converter.worker_process" in command_line(pid) and descendants(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
                    return pid
        time.sleep(0.05)
    return None


def started(pid: int) -> int:
    """When ``pid`` started, in clock ticks after boot (0 once it is gone): orders by age."""
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[19])
