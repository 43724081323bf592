"""Child processes: run an external tool (llamafactory-cli, a llama.cpp binary or script) to
completion, and make sure no child outlives the process that started it.

Argument lists only, never a shell; output captured so a failure can say what the tool said.
Every child Forgeline starts (a service of the local stack, llama-server, LLaMA-Factory, the
converter's worker, a tool) is started with :func:`die_with_parent`, so a parent killed with
SIGKILL, which runs no clean-up, still leaves nothing behind holding ports, GPUs or state.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from forgeline_kit.errors import Internal


class ToolFailed(Internal):
    """A tool exited non-zero or ran past its time limit; carries the end of its output and its
    exit status (negative: killed by that signal; ``None``: stopped at its time limit)."""

    def __init__(
        self, name: str, message: str, output: str, *, returncode: int | None = None
    ) -> None:
        super().__init__(f"{name} {message}\n{output}")
        self.tool = name
        self.output = output
        self.returncode = returncode


@dataclass(frozen=True)
class ToolRun:
    """A finished, successful tool run."""

    output: str
    wall_s: float


# Run as `python -S -E -c _LAUNCHER PARENT_PID SIGNAL PROGRAM ARGS...`: sets the parent-death
# signal, then becomes PROGRAM (the setting survives exec). A preexec_fn would do the same from
# the forked child, but it makes CPython run every os.register_at_fork handler there, and in a
# threaded parent those handlers (filelock's, for one) can take locks another thread held at the
# fork and abort the child.
_LAUNCHER: Final = (
    "import ctypes,os,signal,sys\n"
    "parent,signum=int(sys.argv[1]),int(sys.argv[2])\n"
    "ctypes.CDLL(None,use_errno=True).prctl(1,signum,0,0,0)\n"
    "os.getppid()==parent or os.kill(os.getpid(),signum)\n"
    "os.execvp(sys.argv[3],sys.argv[3:])\n"
)


def die_with_parent(command: Sequence[str | Path], signum: int = signal.SIGTERM) -> list[str]:
    """``command`` made to receive ``signum`` when the process that starts it dies.

    Linux's parent-death signal (``PR_SET_PDEATHSIG``) is delivered however the parent ends,
    SIGKILL included, which no handler in the parent can cover. SIGTERM by default, so a child
    that is itself a parent (a service, torchrun) stops its own children on the way out. The
    child keeps the pid it starts with (the launcher execs the program).

    The kernel counts the *thread* that forked as the parent: start children from the main
    thread, the event loop's thread, or a pool thread that lives as long as the child (asyncio's
    default executor does). Off Linux the command is returned unchanged.

    Raises:
        FileNotFoundError: the program is not there (as starting it directly would).
    """
    argv = [str(part) for part in command]
    if not sys.platform.startswith("linux"):
        return argv
    if shutil.which(argv[0]) is None:
        raise FileNotFoundError(f"{argv[0]}: no such program")
    launcher = [sys.executable, "-S", "-E", "-c", _LAUNCHER, str(os.getpid()), str(signum)]
    return [*launcher, *argv]


def run_tool(
    name: str,
    command: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float | None = None,
    output_tail_chars: int = 6000,
) -> ToolRun:
    """Run ``command`` and wait; raise :class:`ToolFailed` with its output if it fails."""
    argv = die_with_parent(command)
    started = time.monotonic()
    try:
        result = subprocess.run(  # noqa: S603 - an argument list, no shell
            argv,
            env=None if env is None else dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        output = error.output if isinstance(error.output, str) else ""
        raise ToolFailed(name, f"ran past {timeout_s} s", output[-output_tail_chars:]) from error
    if result.returncode != 0:
        raise ToolFailed(
            name,
            f"exited with {result.returncode}",
            result.stdout[-output_tail_chars:],
            returncode=result.returncode,
        )
    return ToolRun(output=result.stdout, wall_s=time.monotonic() - started)


def offline_env(hf_home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment for Hugging Face-based tools that never reaches a model hub.

    Forgeline reads models only from the registry, so a tool that tries the hub is a bug (or a
    silent download on a GPU host); caches go under ``hf_home`` instead of the user's home.
    """
    env = {k: v for k, v in (os.environ if base is None else base).items() if k != "HF_TOKEN"}
    env.update(
        HF_HOME=str(hf_home),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        WANDB_DISABLED="true",
        TOKENIZERS_PARALLELISM="false",
    )
    return env
