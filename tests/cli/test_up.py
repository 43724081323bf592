"""`forgeline up` as a newcomer uses it: run it, use the CLI with no address flags, stop it, run it
again on the state it kept, and kill it outright — nothing it started may outlive it."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from openai import OpenAI
from process_tree import command_line, descendants, kill_all, wait_gone

from forgeline_cli.stack_record import pointer_path
from forgeline_kit.llamacpp.server import free_port

from .conftest import forgeline

pytestmark = pytest.mark.slow

READY_LINE = "Ctrl-C stops everything."
START_TIMEOUT_S = 300.0


@dataclass
class UpProcess:
    """One `forgeline up` run as a user starts it in a terminal, its output collected."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = START_TIMEOUT_S) -> None:
        """Read its output until a line contains ``text``; fail with the output if it exits or
        the time runs out first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            if text in line:
                return
        pytest.fail(f"`forgeline up` never printed {text!r}; it printed:\n{self.output}")

    def exit_status(self, timeout: float = 60) -> int:
        status = self.process.wait(timeout)
        self.wait_for_end()
        return status

    def wait_for_end(self) -> None:
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with no address variables set, as a new user's shell has."""
    for variable in [v for v in os.environ if v.startswith("FORGELINE_CLI_")]:
        monkeypatch.delenv(variable)
    monkeypatch.delenv("FORGELINE_STACK_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


StartUp = Callable[[], UpProcess]


@pytest.fixture
def start_up(user_dir: Path) -> Iterator[StartUp]:
    started: list[UpProcess] = []
    port = free_port()

    def start() -> UpProcess:
        env = {k: v for k, v in os.environ.items() if k != "FORGELINE_STACK_DIR"}
        process = subprocess.Popen(  # noqa: S603 (a fixed argument list, no shell)
            [sys.executable, "-m", "forgeline_cli", "up", "--port", str(port)],
            cwd=user_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started.append(UpProcess(process))
        return started[-1]

    yield start
    for up in started:
        left = descendants(up.pid)
        up.process.kill()
        up.process.wait()
        kill_all(left)


def test_up_restarts_on_its_state_and_leaves_nothing_behind(
    start_up: StartUp, user_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    first = start_up()
    first.wait_for(READY_LINE)
    assert "Resuming" not in first.output

    # The CLI finds the stack without --registry, although its ports were picked at random.
    listed = forgeline("models", "list")
    assert listed.code == 0, listed.err
    assert listed.out.startswith("tiny-llama  1 versions")
    assert "tiny-llama-gguf" in listed.out
    # From any other directory too: the stack names its state directory in the user's.
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("elsewhere"))
        assert forgeline("models", "list").out == listed.out

    # A second stack on the same state would drive the same jobs twice: refused, naming the first.
    second = start_up()
    assert second.exit_status() == 1
    assert f"is in use by forgeline up (pid {first.pid} " in second.output

    services = descendants(first.pid)
    assert len(services) >= 5  # four services, llama-server, the converter's worker
    first.process.send_signal(signal.SIGTERM)
    assert first.exit_status() == 0
    assert "Stopping ..." in first.output
    assert wait_gone(services, within=5) == set()
    assert not (user_dir / ".forgeline/stack/stack.json").exists()
    assert not pointer_path().exists()

    again = start_up()
    again.wait_for(READY_LINE)
    assert (
        f"Resuming on the state kept in {user_dir / '.forgeline/stack'}: 2 models, "
        "1 deployment, 0 fine-tuning jobs" in again.output
    )
    relisted = forgeline("models", "list")
    assert relisted.out == listed.out  # the base model was not made and registered again
    gateway_url = next(
        line.split()[-1] for line in again.lines if line.strip().startswith("gateway  ")
    )
    assert f"console (web UI)       {gateway_url}/console/" in again.output
    client = OpenAI(base_url=f"{gateway_url}/v1", api_key="local", max_retries=0)
    answer = client.chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "Hello"}], max_tokens=4
    )
    assert answer.choices[0].message.content  # the deployment of the first run serves again

    # A gateway killed outright takes its llama-server with it.
    gateway = next(
        pid for pid in descendants(again.pid) if "forgeline_gateway" in command_line(pid)
    )
    servers = {pid for pid in descendants(gateway) if "llama-server" in command_line(pid)}
    assert servers
    os.kill(gateway, signal.SIGKILL)
    assert wait_gone(servers, within=5) == set()

    # And `forgeline up` killed outright (no handler runs) takes every service with it.
    left = descendants(again.pid)
    assert left
    again.process.send_signal(signal.SIGKILL)
    again.process.wait()
    still_running = wait_gone(left, within=5)
    assert still_running == set(), [command_line(pid) for pid in still_running]
