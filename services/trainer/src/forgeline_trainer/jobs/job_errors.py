"""How a job fails: `JobError` carries the OperationError a job ends FAILED with,
`ProcessKilledError` the one case that is retried instead (a LLaMA-Factory run killed by a
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

__all__ = ["JobError", "ProcessKilledError", "registry_failure"]


class JobError(Exception):
    """A job cannot go on; carries the contract's OperationError fields."""

    def __init__(
        self, code: str, message: str, *, field: str = "", retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.retryable = retryable


class ProcessKilledError(JobError):
    """A LLaMA-Factory run was ended by a signal (``-status``): the OOM killer, a preempted node,
    someone's ``kill``; not a failure of the run itself, so it is started again."""

    def __init__(self, code: str, message: str, *, tool: str, signum: int) -> None:
        super().__init__(code, message)
        self.tool = tool
        self.signum = signum


def registry_failure(error: grpc.RpcError | ForgelineError, what: str) -> JobError:
    converted = error_from_rpc_error(error) if isinstance(error, grpc.RpcError) else error
    if isinstance(converted, NotFound):
        return JobError("model_not_found", f"{what}: {converted}", field=converted.field or "")
    if isinstance(converted, Unavailable):
        return JobError("registry_unavailable", f"{what}: {converted}", retryable=True)
    if isinstance(converted, InvalidArgument):
        return JobError("invalid_argument", f"{what}: {converted}", field=converted.field or "")
    return JobError("internal", f"{what}: {converted}")
