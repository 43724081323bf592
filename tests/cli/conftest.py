"""Fixtures of the CLI suite: the four services as real processes with the tiny model registered,
and a helper that runs ``forgeline`` in-process and captures what it prints."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from forgeline_cli.__main__ import main
from forgeline_cli.stack import LocalStack
from forgeline_cli.walkthrough import register_base_model
from forgeline_kit.tinymodel import TinyModel


@dataclass(frozen=True)
class Result:
    """What one ``forgeline`` command did."""

    code: int
    out: str
    err: str


def forgeline(*argv: str) -> Result:
    """Run ``forgeline ARGV...`` in this process; its exit code and output."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code if isinstance(exit_.code, int) else 1
    return Result(code, out.getvalue(), err.getvalue())


@dataclass(frozen=True)
class Stack:
    """The running stack's addresses, the registered base model and a scratch directory."""

    stack: LocalStack
    base: str
    work: Path

    @property
    def registry(self) -> str:
        return self.stack.registry_target

    @property
    def trainer(self) -> str:
        return self.stack.services["trainer"].target

    @property
    def converter(self) -> str:
        return self.stack.services["converter"].target


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModel) -> Iterator[Stack]:
    """The stack with the tiny model registered as ``tiny-llama`` (HF base version)."""
    work = tmp_path_factory.mktemp("cli")
    stack = LocalStack(work / "stack")
    try:
        stack.start()
        yield Stack(stack, register_base_model(stack.registry_target, tiny_model), work)
    finally:
        stack.stop()
