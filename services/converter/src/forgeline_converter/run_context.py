"""What every stage of a conversion run shares: what it runs with (`RunContext`), where it
reports (`Reporter`, and `Steps` for the overall percent), how it fails (`OperationFailure`, and
`registry_failure` for the registry's errors), and the logger its log lines carry.

The stages themselves are `downloading`, `tool_work` and `registering`; `conversion_run` runs them
in order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from forgeline_converter.conversions import (
    AdapterConversion,
    ConversionSpec,
    ConversionState,
    LogSource,
    ModelConversion,
    Retry,
)
from forgeline_converter.registry_access import RegistryAccess
from forgeline_converter.settings import ConverterSettings
from forgeline_converter.worker_pool import WorkerPool
from forgeline_kit.errors import DeadlineExceeded, ForgelineError, Unavailable
from forgeline_kit.operations import OperationFailure

__all__ = [
    "Reporter",
    "RunContext",
    "Steps",
    "log",
    "registry_failure",
]

#: One logger for every stage: a run's log lines keep the name they had before the split.
log = logging.getLogger("forgeline_converter.runner")


class Reporter:
    """Where a run reports; the service records each call as an event."""

    def progress(
        self,
        stage: ConversionState,
        percent: float,
        *,
        target: str = "",
        bytes_done: int = 0,
        bytes_total: int = 0,
    ) -> None:
        """The run entered ``stage`` (or moved on within it)."""

    def log(self, text: str, source: LogSource) -> None:
        """A log line of the service or of the worker."""

    def retry(self, retry: Retry) -> None:
        """The tool work failed for a reason not the input's and runs again."""


@dataclass
class RunContext:
    """What every run shares."""

    settings: ConverterSettings
    registry: RegistryAccess
    llamacpp_version: str
    workers: WorkerPool


class Steps:
    """Overall percent from the number of steps done out of those expected."""

    def __init__(self, spec: ConversionSpec, reporter: Reporter) -> None:
        task = spec.task
        if isinstance(task, AdapterConversion):
            total = 4  # download, convert, verify, register
        else:
            model = task if isinstance(task, ModelConversion) else None
            count = len(model.quantizations) if model else 0
            register_outtype = model.register_outtype if model else False
            outputs = count + (1 if register_outtype or count == 0 else 0)
            imatrix = 1 if model and model.imatrix is not None and count else 0
            total = 3 + imatrix + 2 * count + outputs + 1
        self.total = total
        self.done = 0
        self.reporter = reporter

    def enter(self, stage: ConversionState, target: str = "", **sizes: int) -> None:
        percent = min(99.0, 100.0 * self.done / self.total)
        self.done += 1
        self.reporter.progress(stage, round(percent, 1), target=target, **sizes)


def registry_failure(error: ForgelineError, doing: str) -> OperationFailure:
    """The failure a registry error while ``doing`` something makes: retryable when the
    registry could not be reached, ``internal`` when it refused."""
    if isinstance(error, Unavailable | DeadlineExceeded):
        return OperationFailure(
            "registry_unavailable",
            f"the registry could not be reached while {doing}: {error.message}; the conversion "
            "can be retried once it is back",
            retryable=True,
        )
    return OperationFailure("internal", f"the registry refused {doing}: {error.message}")
