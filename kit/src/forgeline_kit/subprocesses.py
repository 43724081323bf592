"""Run an external tool (llamafactory-cli, a llama.cpp binary or script) to completion.

Argument lists only, never a shell; output captured so a failure can say what the tool said.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from forgeline_kit.errors import Internal


class ToolFailed(Internal):
    """A tool exited non-zero or ran past its time limit; carries the end of its output."""

    def __init__(self, name: str, message: str, output: str) -> None:
        super().__init__(f"{name} {message}\n{output}")
        self.tool = name
        self.output = output


@dataclass(frozen=True)
class ToolRun:
    """A finished, successful tool run."""

    output: str
    wall_s: float


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
    argv = [str(part) for part in command]
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
            name, f"exited with {result.returncode}", result.stdout[-output_tail_chars:]
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
