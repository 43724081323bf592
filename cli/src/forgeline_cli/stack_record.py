"""Where a running local stack listens: ``stack.json`` in its state directory.

`forgeline up` picks free ports for the registry, trainer and converter, so the CLI's built-in
defaults (50051-50053) would point at nothing. The stack writes this record while its services run
and removes it when they stop; every command's address options default to it, after the
``--registry``-style options and the ``FORGELINE_CLI_*`` variables, which still win.

The CLI looks in ``$FORGELINE_STACK_DIR`` when set, else in ``.forgeline/stack`` (what
`forgeline up` uses by default) in the working directory or the nearest parent that has one, as
git finds its repository, else in the stack this user started last: a running stack also names
its state directory in ``$XDG_STATE_HOME/forgeline/current-stack`` (``~/.local/state/...``), so
``forgeline models list`` works from any directory. A record whose process is gone (the stack was
killed) is ignored.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = [
    "DEFAULT_STATE_DIR",
    "RECORD_NAME",
    "STACK_DIR_VARIABLE",
    "StackRecord",
    "find_running",
    "pointer_path",
]

RECORD_NAME: Final = "stack.json"
#: Where `forgeline up` keeps its state unless told otherwise (relative to where it runs).
DEFAULT_STATE_DIR: Final = Path(".forgeline/stack")
STACK_DIR_VARIABLE: Final = "FORGELINE_STACK_DIR"
POINTER_NAME: Final = "current-stack"


def pointer_path() -> Path:
    """The per-user file naming the state directory of the stack this user started last."""
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "forgeline" / POINTER_NAME


class StackRecord(BaseModel):
    """The addresses of one running stack's services."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    #: The process that started the services (they die with it).
    pid: int
    state_dir: str
    #: The gateway's base URL, when it runs.
    gateway: str | None = None
    #: gRPC ``host:port`` by service name (registry, trainer, converter).
    targets: dict[str, str] = {}
    #: ``/metrics`` URL by service name.
    metrics: dict[str, str] = {}

    def write(self, state_dir: Path) -> None:
        """Replace the record in ``state_dir`` (written beside it, then renamed: a reader never
        sees half a file)."""
        staging = state_dir / f".{RECORD_NAME}.{os.getpid()}"
        staging.write_text(self.model_dump_json(indent=1) + "\n", encoding="utf-8")
        staging.replace(state_dir / RECORD_NAME)
        _point_at(state_dir)

    @staticmethod
    def remove(state_dir: Path) -> None:
        """Remove the record of a stack whose services all stopped (and the user's pointer,
        if it names this stack)."""
        with contextlib.suppress(FileNotFoundError):
            (state_dir / RECORD_NAME).unlink()
        pointer = pointer_path()
        with contextlib.suppress(OSError):
            if pointer.read_text(encoding="utf-8").strip() == str(state_dir.absolute()):
                pointer.unlink()

    @classmethod
    def read(cls, state_dir: Path) -> StackRecord | None:
        """The record in ``state_dir`` if its stack is still running."""
        try:
            record = cls.model_validate_json((state_dir / RECORD_NAME).read_bytes())
        except (OSError, ValidationError):
            return None
        return record if _alive(record.pid) else None

    def address(self, service: str) -> str | None:
        """Where ``service`` listens (a gRPC target, or the gateway's base URL)."""
        return self.gateway if service == "gateway" else self.targets.get(service)


def find_running(start: Path | None = None) -> StackRecord | None:
    """The running stack the CLI talks to when no address is given, if there is one."""
    chosen = os.environ.get(STACK_DIR_VARIABLE)
    if chosen:
        return StackRecord.read(Path(chosen))
    here = (start or Path.cwd()).absolute()
    for directory in (here, *here.parents):
        state_dir = directory / DEFAULT_STATE_DIR
        if (state_dir / RECORD_NAME).is_file():
            return StackRecord.read(state_dir)
    try:
        pointed = pointer_path().read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return StackRecord.read(Path(pointed)) if pointed else None


def _point_at(state_dir: Path) -> None:
    """Name `state_dir` in the user's pointer; best effort (a read-only home only loses the
    convenience)."""
    pointer = pointer_path()
    with contextlib.suppress(OSError):
        pointer.parent.mkdir(parents=True, exist_ok=True)
        staging = pointer.with_name(f".{POINTER_NAME}.{os.getpid()}")
        staging.write_text(f"{state_dir.absolute()}\n", encoding="utf-8")
        staging.replace(pointer)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True
