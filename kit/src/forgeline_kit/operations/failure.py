"""The one way long-running work fails: a code, a message the user can act on, and whether
running it again may help."""

from __future__ import annotations

from forgeline_proto.common.v1 import common_pb2

__all__ = ["OperationFailure"]


class OperationFailure(Exception):  # noqa: N818 (it is the operation's failure, not a bug)
    """The work ends FAILED with this error.

    ``code`` is one of the contract's error codes (``invalid_argument``, ``internal``,
    ``resource_exhausted``...), ``message`` says what went wrong and what to do, ``field`` names
    the request field at fault, if any; ``retryable`` says the cause was not the request (a
    process killed, a service unavailable) so the same request may succeed later.
    """

    def __init__(
        self, code: str, message: str, *, field: str = "", retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.retryable = retryable

    def to_proto(self) -> common_pb2.OperationError:
        """The contract's ``OperationError``."""
        return common_pb2.OperationError(
            code=self.code, message=self.message, field=self.field, retryable=self.retryable
        )

    @classmethod
    def from_proto(cls, error: common_pb2.OperationError) -> OperationFailure:
        """The failure an ``OperationError`` describes."""
        return cls(error.code, error.message, field=error.field, retryable=error.retryable)
