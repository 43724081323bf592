"""Where a running local stack listens: ``stack.json`` in its state directory.

`forgeline up` picks free ports for the registry, trainer and converter, so the CLI's built-in
defaults (50051-50053) would point at nothing. The stack writes this record while its services run
and removes it when they stop; every command's address options default to it, after the
``--registry``-style options and the ``FORGELINE_CLI_*`` variables, which still win.

The CLI looks in ``$FORGELINE_STACK_DIR`` when set, else in ``.forgeline/stack`` (what
`forgeline up` uses by default) in the working directory or the nearest parent that has one, as
git finds its repository. A record whose process is gone (the stack was killed) is ignored.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["DEFAULT_STATE_DIR", "RECORD_NAME", "STACK_DIR_VARIABLE", "StackRecord", "find_running"]

RECORD_NAME: Final = "stack.json"
#: Where `forgeline up` keeps its state unless told otherwise (relative to where it runs).
DEFAULT_STATE_DIR: Final = Path(".forgeline/stack")
STACK_DIR_VARIABLE: Final = "FORGELINE_STACK_DIR"


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

    @staticmethod
    def remove(state_dir: Path) -> None:
        """Remove the record of a stack whose services all stopped."""
        with contextlib.suppress(FileNotFoundError):
            (state_dir / RECORD_NAME).unlink()

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
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True
