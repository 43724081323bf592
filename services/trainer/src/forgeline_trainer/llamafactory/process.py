"""A training run as a process group the trainer can watch and stop.

``llamafactory-cli train`` starts helpers of its own (torchrun workers, dataloader workers), so a
job runs in its own session: cancelling signals the whole group, and nothing is left holding the
GPU. Output goes to a log file (a pipe nobody reads would block the run once full).

A run's group is also recorded (:class:`GroupRecord`: its id, its leader's start time, the host,
boot and pid namespace) so that a trainer started after one that died can stop a run the
parent-death signal did not (:func:`stop_stale_group`), and never a process that merely got a
recorded pid again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from forgeline_kit.subprocesses import die_with_parent

#: How long a cancelled run gets to stop on SIGTERM before the group is killed.
TERMINATE_GRACE_S = 5.0
_PROC = Path("/proc")
_BOOT_ID = _PROC / "sys" / "kernel" / "random" / "boot_id"


class TrainingProcess:
    """A command running in its own process group, its output in ``log_path``."""

    def __init__(
        self,
        command: Sequence[str | Path],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self._process = subprocess.Popen(  # noqa: S603 - an argument list, no shell
                # SIGTERM at the trainer's death, so torchrun stops its workers too; a trainer
                # killed outright must not leave a run training beside the one its restart begins.
                die_with_parent(command),
                env=None if env is None else dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self._process.pid

    def poll(self) -> int | None:
        """The exit status once the run's main process ended; ``None`` while it runs."""
        return self._process.poll()

    def wait(self, timeout_s: float | None = None) -> int:
        """Wait for the main process; its exit status (``subprocess.TimeoutExpired`` on timeout)."""
        return self._process.wait(timeout_s)

    def cancel(self, grace_s: float = TERMINATE_GRACE_S) -> int:
        """Stop the whole group: SIGTERM, then SIGKILL after ``grace_s``; the exit status.

        Returns once every process of the group is gone, so the caller may free the slot.
        """
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self.group_alive() and time.monotonic() < deadline:
            self._process.poll()  # reap the leader so it does not linger as a zombie
            time.sleep(0.05)
        if self.group_alive():
            self._signal_group(signal.SIGKILL)
        status = self._process.wait()
        kill_deadline = time.monotonic() + grace_s
        while self.group_alive() and time.monotonic() < kill_deadline:
            time.sleep(0.05)
        return status

    def group_alive(self) -> bool:
        """Whether any process of the group is still running (zombies do not count: they hold
        no memory and no GPU, and in a container nobody may ever reap them)."""
        if self._process.poll() is None:
            return True
        return bool(group_members(self.pid))

    def _signal_group(self, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):  # the whole group already ended
            os.killpg(self.pid, signum)

    def log_tail(self, chars: int = 6000) -> str:
        """The end of the run's output, for a failure message."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return text[-chars:]


@dataclass(frozen=True)
class _Stat:
    """The fields of ``/proc/<pid>/stat`` used here."""

    pid: int
    state: str
    pgid: int
    start_ticks: int
    """When the process started, in clock ticks after boot: with the boot, it tells a process
    from a later one that was given the same pid."""

    @property
    def live(self) -> bool:
        return self.state not in ("Z", "X")


def _parse_stat(pid: int, text: str) -> _Stat:
    # The command name (field 2) may hold spaces and parentheses: split after its end. What
    # follows starts at field 3 (state); pgrp is field 5 and starttime field 22 (proc(5)).
    fields = text[text.rfind(")") + 2 :].split()
    return _Stat(pid=pid, state=fields[0], pgid=int(fields[2]), start_ticks=int(fields[19]))


def _stat(pid: int) -> _Stat | None:
    try:
        return _parse_stat(pid, (_PROC / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None  # no such process (any more), or no /proc


def _processes() -> Iterator[_Stat]:
    try:
        entries = list(_PROC.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name.isdigit() and (found := _stat(int(entry.name))) is not None:
            yield found  # one that ended while we looked is skipped


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``, from ``/proc``."""
    return [p.pid for p in _processes() if p.pgid == pgid and p.live]


@dataclass(frozen=True)
class GroupRecord:
    """What identifies a run's process group on its host, kept in the job's record so a later
    trainer can find the run again."""

    pgid: int
    """The group's id: the pid of its leader, the run's main process."""
    start_ticks: int
    """When the leader started (``/proc/<pid>/stat`` field 22), in clock ticks after boot."""
    boot_id: str
    """``/proc/sys/kernel/random/boot_id``: pids and start times mean nothing after a reboot."""
    hostname: str
    pid_namespace: str
    """``/proc/self/ns/pid`` of the trainer: another container sees other processes under the
    same numbers."""


def _this_host() -> tuple[str, str, str] | None:
    """Boot id, host name and pid namespace here; None without ``/proc`` (not Linux)."""
    try:
        boot_id = _BOOT_ID.read_text().strip()
        namespace = os.readlink(_PROC / "self" / "ns" / "pid")
    except OSError:
        return None
    return boot_id, socket.gethostname(), namespace


def group_record(pid: int) -> GroupRecord | None:
    """The record of the process group led by ``pid`` (a process started in its own session);
    None when it already ended or this system has no ``/proc``."""
    here = _this_host()
    stat = _stat(pid)
    if here is None or stat is None or not stat.live or stat.pgid != pid:
        return None
    boot_id, hostname, namespace = here
    return GroupRecord(
        pgid=pid,
        start_ticks=stat.start_ticks,
        boot_id=boot_id,
        hostname=hostname,
        pid_namespace=namespace,
    )


StaleOutcome = Literal["stopped", "gone", "elsewhere", "reused"]


@dataclass(frozen=True)
class StaleGroup:
    """What :func:`stop_stale_group` found and did."""

    outcome: StaleOutcome
    """``stopped``: the run was still there and is gone now; ``gone``: it had ended;
    ``elsewhere``: it ran on another host, boot or pid namespace, so it cannot be seen from here;
    ``reused``: its pid now belongs to another process, left alone."""
    members: tuple[int, ...] = ()
    """The processes found in the group (``stopped`` only)."""
    killed: bool = False
    """Whether SIGTERM was not enough and the group got SIGKILL."""


def _recorded_members(record: GroupRecord) -> list[int] | None:
    """The live processes of the recorded group; None when its id now leads another group.

    A pid that is the id of a live group is never handed to a new process, so while any member
    of the recorded group lives, the group id is still that group's; a leader with that pid but
    another start time means the old group ended and the number was given out again. Members
    started before the recorded leader cannot belong to the run.
    """
    leader = _stat(record.pgid)
    if leader is not None and leader.start_ticks != record.start_ticks:
        return None
    return [
        p.pid
        for p in _processes()
        if p.pgid == record.pgid and p.live and p.start_ticks >= record.start_ticks
    ]


def _wait_gone(record: GroupRecord, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if not _recorded_members(record):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def stop_stale_group(record: GroupRecord, grace_s: float = TERMINATE_GRACE_S) -> StaleGroup:
    """Stop the run ``record`` names if it is still running here: SIGTERM to its group, SIGKILL
    after ``grace_s``; returns once its processes are gone (or after another ``grace_s``).

    Only on the host, boot and pid namespace the record was made in, and only while the group's
    leader (if it is still there) is the process that was recorded: a pid given to another
    process since is never signalled.
    """
    here = _this_host()
    if here is None or here != (record.boot_id, record.hostname, record.pid_namespace):
        return StaleGroup("elsewhere")
    members = _recorded_members(record)
    if members is None:
        return StaleGroup("reused")
    if not members:
        return StaleGroup("gone")
    killed = False
    for signum in (signal.SIGTERM, signal.SIGKILL):
        # Looked at again right before each signal: the group may have ended (and its id been
        # given out again) while we waited.
        if _recorded_members(record) in (None, []):
            break
        with contextlib.suppress(ProcessLookupError):  # the whole group ended meanwhile
            os.killpg(record.pgid, signum)
        killed = signum == signal.SIGKILL
        if _wait_gone(record, grace_s):
            break
    return StaleGroup("stopped", tuple(sorted(members)), killed)
