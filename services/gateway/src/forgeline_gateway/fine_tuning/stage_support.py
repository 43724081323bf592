"""What the fine-tuning pipeline's stages share: how a stage fails a job (`StageFailedError`),
how registry versions are written in a job record, and how the trainer's and the converter's
answers (streams, errors, retries of a killed process) become the job's errors and events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from forgeline_gateway.fine_tuning.records import JobFailure, JobRequest
from forgeline_kit.errors import ForgelineError, error_from_rpc_error
from forgeline_proto.common.v1 import common_pb2

__all__ = [
    "INTERACTIVE_TIMEOUT",
    "StageFailedError",
    "describe",
    "fully_trained_modules",
    "job_error",
    "ref_text",
    "retry_message",
    "rpc_stream",
    "version_ref",
]

#: Longest wait for a service while a user waits on the HTTP answer (creating a job).
INTERACTIVE_TIMEOUT = 30.0


class StageFailedError(Exception):
    """A stage ended the job: `error` is what the user sees."""

    def __init__(self, error: JobFailure) -> None:
        super().__init__(error.message)
        self.error = error


def ref_text(ref: common_pb2.VersionRef) -> str:
    return f"{ref.model}:{ref.version}"


def version_ref(text: str) -> common_pb2.VersionRef:
    model, _, number = text.rpartition(":")
    return common_pb2.VersionRef(model=model, version=int(number))


def job_error(error: common_pb2.OperationError, fallback: str) -> JobFailure:
    return JobFailure(
        code=error.code or fallback,
        message=error.message or f"the job failed ({fallback})",
        param=error.field or None,
    )


def describe(error: BaseException) -> str:
    return error.message if isinstance(error, ForgelineError) else repr(error)


async def rpc_stream(call: Any) -> AsyncIterator[Any]:
    """Iterate a server stream, with gRPC failures as domain errors."""
    try:
        async for item in call:
            yield item
    except grpc.RpcError as error:
        raise error_from_rpc_error(error) from error


def retry_message(retry: common_pb2.Retry) -> str:
    """What a service's retry of a killed process tells the user."""
    reason = retry.error.message.splitlines()[0] if retry.error.message else retry.error.code
    reason = reason[:1].upper() + reason[1:]
    delay = retry.delay.ToTimedelta().total_seconds()
    return f"{reason}; retrying (attempt {retry.attempt} of {retry.max_attempts}) in {delay:g} s"


def fully_trained_modules(request: JobRequest) -> str | None:
    """The modules a LoRA job trains in full beside its adapter (LLaMA-Factory's
    ``additional_target``), which a GGUF LoRA adapter cannot carry (llama.cpp PR 9948)."""
    value = request.arguments.get("additional_target", request.lora.additional_target)
    return str(value) if value else None
