"""A training run as a process group the trainer can watch and stop.

``llamafactory-cli train`` starts helpers of its own (torchrun workers, dataloader workers), so a
job runs in its own session: cancelling signals the whole group, and nothing is left holding the
GPU. Output goes to a log file (a pipe nobody reads would block the run once full).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from forgeline_kit.subprocesses import die_with_parent

#: How long a cancelled run gets to stop on SIGTERM before the group is killed.
TERMINATE_GRACE_S = 5.0


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


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``, from ``/proc``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it ended while we looked
        # The command name (field 2) may hold spaces and parentheses: split after its end.
        fields = stat[stat.rfind(")") + 2 :].split()
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members
