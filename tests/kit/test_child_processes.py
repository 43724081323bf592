"""No child outlives its parent, and one process owns a state directory: both hold when the
parent is killed with SIGKILL, which runs no clean-up code at all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from process_tree import alive, command_line, kill_all, wait_gone

from forgeline_kit.state_lock import StateDirInUseError, hold_state_dir

# A parent that starts `sleep` (with or without the kit's parent-death signal), says the child's
# pid, and waits to be killed.
_PARENT = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    from forgeline_kit.subprocesses import die_with_parent
    mode = sys.argv[1]
    command = ["sleep", "120"]
    if mode == "stubborn":  # a child that goes on after SIGTERM, as a hung server may
        command = [sys.executable, "-c", sys.argv[2]]
    if mode == "plain":
        child = subprocess.Popen(command)
    elif mode == "stubborn":
        child = subprocess.Popen(die_with_parent(command, signal.SIGKILL))
    else:
        child = subprocess.Popen(die_with_parent(command))
    print(child.pid, flush=True)
    time.sleep(120)
    """
)
_STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"


@pytest.fixture
def orphans() -> Iterator[set[int]]:
    """Pids a test may leave behind on failure; killed at teardown."""
    pids: set[int] = set()
    yield pids
    kill_all(pids)


def _parent_with_child(armed: bool, mode: str = "") -> tuple[subprocess.Popen[str], int]:
    parent = subprocess.Popen(  # noqa: S603 (a fixed argument list, no shell)
        [sys.executable, "-c", _PARENT, mode or ("armed" if armed else "plain"), _STUBBORN],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    return parent, int(parent.stdout.readline())


def test_a_child_dies_when_its_parent_is_killed(orphans: set[int]) -> None:
    parent, child = _parent_with_child(armed=True)
    orphans.add(child)
    assert alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert wait_gone({child}, within=5) == set()


def test_a_child_that_ignores_sigterm_dies_with_sigkill_as_its_signal(
    orphans: set[int],
) -> None:
    # What the gateway gives llama-server: one seen hanging in its graceful shutdown after its
    # gateway was killed.
    parent, child = _parent_with_child(armed=True, mode="stubborn")
    orphans.add(child)
    deadline = time.monotonic() + 10
    while "SIG_IGN" not in command_line(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert wait_gone({child}, within=5) == set()


def test_the_child_keeps_the_pid_it_was_started_with(orphans: set[int]) -> None:
    # The launcher sets the signal and execs the program: the pid a caller holds is the child's.
    parent, child = _parent_with_child(armed=True)
    orphans.add(child)
    try:
        deadline = time.monotonic() + 10
        while not command_line(child).startswith("sleep 120") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert command_line(child).startswith("sleep 120")
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()


def test_without_the_signal_a_child_outlives_its_parent(orphans: set[int]) -> None:
    # What every child process did before: proof the test above measures the kit, not `sleep`.
    parent, child = _parent_with_child(armed=False)
    orphans.add(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert wait_gone({child}, within=1) == {child}


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from forgeline_kit.state_lock import hold_state_dir
    lock = hold_state_dir(Path(sys.argv[1]), "forgeline-trainer")
    print("held", flush=True)
    time.sleep(120)
    """
)


def test_a_state_directory_has_one_owner_until_it_dies(tmp_path: Path) -> None:
    state = tmp_path / "state"
    holder = subprocess.Popen(  # noqa: S603 (a fixed argument list, no shell)
        [sys.executable, "-c", _HOLDER, str(state)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StateDirInUseError) as refused:
            hold_state_dir(state, "forgeline-trainer")
        message = str(refused.value)
        assert f"in use by forgeline-trainer (pid {holder.pid} on " in message
        assert "stop that process first" in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel dropped the lock with its holder: no stale lock for an operator to delete.
    with hold_state_dir(state, "forgeline-trainer") as lock:
        assert f'"pid": {os.getpid()}' in lock.path.read_text()
