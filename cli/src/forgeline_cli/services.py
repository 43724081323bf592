"""Where the CLI finds each service, and how a refused or unreachable service is reported.

Every command that talks to a service takes its address as one option (``--registry``...) whose
default comes from one ``FORGELINE_CLI_*`` variable, else from the running `forgeline up` stack
(:mod:`forgeline_cli.stack_record`), else the service's usual port on this host, and reports a
failure as one line on stderr that names the option and variable when nothing answers there.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Final

from forgeline_cli.console import EXIT_FAILED, fail
from forgeline_cli.stack_record import find_running
from forgeline_kit.errors import ForgelineError, Unavailable

__all__ = ["CONVERTER", "GATEWAY", "REGISTRY", "TRAINER", "ServiceAddress", "run_command"]


@dataclass(frozen=True)
class ServiceAddress:
    """How one service is reached: its command-line option, environment variable and default."""

    name: str
    option: str
    variable: str
    default: str
    metavar: str = "HOST:PORT"
    kind: str = "gRPC address"

    @property
    def dest(self) -> str:
        """The option's attribute on the parsed arguments."""
        return self.option.removeprefix("--").replace("-", "_")

    @property
    def service(self) -> str:
        """The service's name in a stack record."""
        return self.option.removeprefix("--")

    def resolve_default(self) -> str:
        """The variable, else the running local stack's address, else the built-in default."""
        chosen = os.environ.get(self.variable)
        if chosen:
            return chosen
        stack = find_running()
        found = stack.address(self.service) if stack is not None else None
        return found or self.default

    def add_option(self, parser: argparse.ArgumentParser, purpose: str = "") -> None:
        """Add the option, defaulting as :meth:`resolve_default` says."""
        why = f", {purpose}" if purpose else ""
        parser.add_argument(
            self.option,
            default=self.resolve_default(),
            metavar=self.metavar,
            help=f"the {self.name}'s {self.kind}{why} (default: ${self.variable}, else the "
            f"running `forgeline up` stack's, else {self.default})",
        )

    def of(self, args: argparse.Namespace) -> str:
        """The address the command line chose."""
        return str(getattr(args, self.dest))

    @property
    def hint(self) -> str:
        """What to do when nothing answers at the address."""
        return (
            f"Point {self.option} or ${self.variable} at it, or start the local stack with "
            "`forgeline up`"
        )

    def unreachable(self, address: str, detail: str) -> str:
        """The message for a connection that failed, naming the option and variable."""
        return f"cannot reach the {self.name} at {address}: is it running? {self.hint} ({detail})"


REGISTRY: Final = ServiceAddress(
    "registry", "--registry", "FORGELINE_CLI_REGISTRY", "127.0.0.1:50051"
)
# The trainer's own default gRPC port is the kit's 50051, which the registry also uses on one
# machine; a local trainer is expected next to it, on 50052 (the converter on 50053).
TRAINER: Final = ServiceAddress("trainer", "--trainer", "FORGELINE_CLI_TRAINER", "127.0.0.1:50052")
CONVERTER: Final = ServiceAddress(
    "converter", "--converter", "FORGELINE_CLI_CONVERTER", "127.0.0.1:50053"
)
#: The gateway's admin API is HTTP, at its own default address.
GATEWAY: Final = ServiceAddress(
    "gateway",
    "--gateway",
    "FORGELINE_CLI_GATEWAY",
    "http://127.0.0.1:8080",
    metavar="URL",
    kind="base URL",
)


def run_command(
    address: ServiceAddress, args: argparse.Namespace, work: Coroutine[Any, Any, int]
) -> int:
    """Run ``work`` (which talks to the service at ``address``); its exit code, or 1 with one
    line on stderr when the service refused the call or nothing answered."""
    try:
        return asyncio.run(work)
    except Unavailable as exc:
        # gRPC's own wording when no connection could be made, as opposed to a service that
        # answered UNAVAILABLE itself (its storage is down, it is shutting down...).
        if "failed to connect" in exc.message.lower():
            return fail(address.unreachable(address.of(args), exc.message))
        return fail(exc.message, EXIT_FAILED)
    except ForgelineError as exc:
        return fail(exc.message, EXIT_FAILED)
