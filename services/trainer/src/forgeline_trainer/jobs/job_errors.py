"""How a job fails: the kit's `OperationFailure` carries the OperationError a job ends FAILED
with, `ProcessKilledError` the one case that is retried instead (a LLaMA-Factory run killed by a
signal), and `registry_failure` turns the registry's errors into the contract's codes.

Every stage raises these (`runner` and `validating` alike), so they live apart from both.
"""

from __future__ import annotations

import grpc

from forgeline_kit.errors import (
    ForgelineError,
    InvalidArgument,
    NotFound,
    Unavailable,
    error_from_rpc_error,
)
from forgeline_kit.operations import OperationFailure

__all__ = ["ProcessKilledError", "registry_failure"]


class ProcessKilledError(OperationFailure):
    """A LLaMA-Factory run was ended by a signal (``-status``): the OOM killer, a preempted node,
    someone's ``kill``; not a failure of the run itself, so it is started again."""

    def __init__(self, code: str, message: str, *, tool: str, signum: int) -> None:
        super().__init__(code, message)
        self.tool = tool
        self.signum = signum


def registry_failure(error: grpc.RpcError | ForgelineError, what: str) -> OperationFailure:
    converted = error_from_rpc_error(error) if isinstance(error, grpc.RpcError) else error
    if isinstance(converted, NotFound):
        return OperationFailure(
            "model_not_found", f"{what}: {converted}", field=converted.field or ""
        )
    if isinstance(converted, Unavailable):
        return OperationFailure("registry_unavailable", f"{what}: {converted}", retryable=True)
    if isinstance(converted, InvalidArgument):
        return OperationFailure(
            "invalid_argument", f"{what}: {converted}", field=converted.field or ""
        )
    return OperationFailure("internal", f"{what}: {converted}")
