"""What every stage of a conversion run shares: what it runs with (`RunContext`), where it
reports (`Reporter`, and `Steps` for the overall percent), how it fails (`OperationFailure`, and
`registry_failure` for the registry's errors), and the logger its log lines carry.

The stages themselves are `downloading`, `tool_work` and `registering`; `runner` runs them in
order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from google.protobuf import duration_pb2

from forgeline_converter.settings import ConverterSettings
from forgeline_converter.worker_pool import WorkerPool
from forgeline_kit.errors import DeadlineExceeded, ForgelineError, Unavailable
from forgeline_kit.operations import OperationFailure
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.converter.v1 import converter_pb2 as pb
from forgeline_registry_client.client import RegistryClient

__all__ = [
    "Reporter",
    "RunContext",
    "Steps",
    "as_duration",
    "log",
    "registry_failure",
]

#: One logger for every stage: a run's log lines keep the name they had before the split.
log = logging.getLogger("forgeline_converter.runner")


class Reporter:
    """Where a run reports; the service records each call as an event."""

    def progress(
        self,
        stage: pb.ConversionState.ValueType,
        percent: float,
        *,
        target: str = "",
        bytes_done: int = 0,
        bytes_total: int = 0,
    ) -> None:
        """The run entered ``stage`` (or moved on within it)."""

    def log(self, text: str, source: common_pb2.LogSource.ValueType) -> None:
        """A log line of the service or of the worker."""

    def retry(self, retry: common_pb2.Retry) -> None:
        """The tool work failed for a reason not the input's and runs again."""


@dataclass
class RunContext:
    """What every run shares."""

    settings: ConverterSettings
    registry: RegistryClient
    llamacpp_version: str
    workers: WorkerPool


class Steps:
    """Overall percent from the number of steps done out of those expected."""

    def __init__(self, spec: pb.ConversionSpec, reporter: Reporter) -> None:
        if spec.HasField("adapter"):
            total = 4  # download, convert, verify, register
        else:
            count = len(spec.model.quantizations)
            outputs = count + (1 if spec.model.register_outtype or count == 0 else 0)
            imatrix = 1 if spec.model.HasField("imatrix") and count else 0
            total = 3 + imatrix + 2 * count + outputs + 1
        self.total = total
        self.done = 0
        self.reporter = reporter

    def enter(self, stage: pb.ConversionState.ValueType, target: str = "", **sizes: int) -> None:
        percent = min(99.0, 100.0 * self.done / self.total)
        self.done += 1
        self.reporter.progress(stage, round(percent, 1), target=target, **sizes)


def registry_failure(error: ForgelineError, doing: str) -> OperationFailure:
    if isinstance(error, Unavailable | DeadlineExceeded):
        return OperationFailure(
            "registry_unavailable",
            f"the registry could not be reached while {doing}: {error.message}; the conversion "
            "can be retried once it is back",
            retryable=True,
        )
    return OperationFailure("internal", f"the registry refused {doing}: {error.message}")


def as_duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration
