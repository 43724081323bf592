"""Cancelling a run stops its whole process group within seconds."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from forgeline_trainer.llamafactory.process import TrainingProcess, group_members

# A stand-in for llamafactory-cli: a parent that starts a worker (as torchrun does), writes both
# process ids once they run, and then works forever. With ``stubborn`` both ignore SIGTERM.
SCRIPT = """
import os, signal, subprocess, sys, time
stubborn = sys.argv[2] == "stubborn"
if stubborn:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
worker = subprocess.Popen([sys.executable, "-c", (
    "import signal, time\\n"
    + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n" if stubborn else "")
    + "while True: time.sleep(0.1)\\n"
)])
with open(sys.argv[1] + ".tmp", "w") as out:
    out.write(f"{os.getpid()} {worker.pid}")
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
print("working", flush=True)
while True:
    time.sleep(0.1)
"""


def start(tmp_path: Path, mode: str) -> tuple[TrainingProcess, list[int]]:
    pids_file = tmp_path / "pids"
    run = TrainingProcess(
        [sys.executable, "-c", SCRIPT, str(pids_file), mode], log_path=tmp_path / "run.log"
    )
    deadline = time.monotonic() + 30
    while not pids_file.exists():
        assert time.monotonic() < deadline, run.log_tail()
        assert run.poll() is None, run.log_tail()
        time.sleep(0.05)
    return run, [int(pid) for pid in pids_file.read_text().split()]


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("mode", ["polite", "stubborn"])
def test_cancel_stops_every_process_of_the_run_within_10_s(tmp_path: Path, mode: str) -> None:
    run, pids = start(tmp_path, mode)
    assert all(running(pid) for pid in pids)
    assert sorted(group_members(run.pid)) == sorted(pids)

    started = time.monotonic()
    status = run.cancel(grace_s=2)
    took = time.monotonic() - started

    assert took < 10
    assert not any(running(pid) for pid in pids)
    assert group_members(run.pid) == []
    assert status != 0
    assert "working" in run.log_tail()
    print(f"cancel ({mode}): {took:.2f} s")


def test_a_finished_run_reports_its_status(tmp_path: Path) -> None:
    run = TrainingProcess(
        [sys.executable, "-c", "import sys; print('done'); sys.exit(3)"],
        log_path=tmp_path / "run.log",
    )

    assert run.wait(timeout_s=30) == 3
    assert run.log_tail().strip() == "done"
    assert run.cancel() == 3  # cancelling what already ended is harmless
    assert os.getpgid(os.getpid()) != run.pid  # it ran in its own group
