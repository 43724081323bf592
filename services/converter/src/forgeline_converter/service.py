"""The converter's domain logic: accept conversions, run them (a few at a time), record their
events, let callers watch, list and cancel them, and pick up unfinished ones after a restart.

Every change of a conversion is an event stored with it through the kit's operations layer
(``store.ConversionStore``); watches read the store and sleep on a ``ChangeBell`` until the next
event is recorded, so a watch started late, or resumed after a disconnect with
``after_sequence``, sees exactly the history a live one saw.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from forgeline_converter.conversion_run import run_conversion
from forgeline_converter.conversions import (
    TERMINAL_STATES,
    Conversion,
    ConversionEvent,
    ConversionPage,
    ConversionSpec,
    ConversionState,
    EventPayload,
    LogLine,
    LogSource,
    OperationError,
    Progress,
    QuantizationType,
    QuantizationTypes,
    Retry,
    VersionRef,
)
from forgeline_converter.llamacpp.tools import (
    quantization_type_descriptions,
    requires_imatrix,
)
from forgeline_converter.registry_access import RegistryAccess
from forgeline_converter.run_context import Reporter, RunContext
from forgeline_converter.settings import ConverterSettings
from forgeline_converter.store import ConversionStore
from forgeline_converter.validation import validate_spec
from forgeline_converter.worker_pool import WorkerPool
from forgeline_kit.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.operations import ChangeBell, OperationFailure, watch_events
from forgeline_kit.operations.page_tokens import decode_position, encode_page_token

__all__ = ["Converter"]

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# How long CancelConversion waits for the tools to stop before answering CANCELLING.
CANCEL_WAIT_S = 30.0
# How long a shutdown waits for running conversions to stop their workers.
SHUTDOWN_WAIT_S = 15.0


def _now() -> datetime:
    return datetime.now(UTC)


class _EventReporter(Reporter):
    """Records a run's reports as events of its conversion."""

    def __init__(self, converter: Converter, conversion: Conversion) -> None:
        self.converter = converter
        self.conversion = conversion

    def progress(
        self,
        stage: ConversionState,
        percent: float,
        *,
        target: str = "",
        bytes_done: int = 0,
        bytes_total: int = 0,
    ) -> None:
        self.conversion.state = stage
        self.conversion.percent = percent
        self.converter.record(
            self.conversion,
            Progress(
                stage=stage,
                percent=percent,
                target=target,
                bytes_done=bytes_done,
                bytes_total=bytes_total,
            ),
        )

    def log(self, text: str, source: LogSource) -> None:
        self.converter.record(self.conversion, LogLine(source=source, text=text))

    def retry(self, retry: Retry) -> None:
        self.converter.record(self.conversion, retry)


class Converter:
    """Conversions: accepted, queued, run, watched, cancelled, resumed after restarts."""

    def __init__(
        self,
        settings: ConverterSettings,
        store: ConversionStore,
        registry: RegistryAccess,
        toolchain: Toolchain,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.toolchain = toolchain
        self._workers = WorkerPool(settings.llamacpp_home)
        self._context = RunContext(settings, registry, toolchain.version, self._workers)
        self._slots = asyncio.Semaphore(settings.max_concurrent_conversions)
        # The record of each conversion this process runs, changed as it goes.
        self._live: dict[str, Conversion] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancel_requested: set[str] = set()
        self._bell = ChangeBell()
        self._closing = False
        self._types: dict[str, str] | None = None

    # --- lifecycle

    async def start(self) -> None:
        """Pick up the conversions a previous process left unfinished: each runs again from the
        start (every step is idempotent: registration uses per-output request ids), or ends
        CANCELLED when a cancel was under way."""
        for conversion in self.store.unfinished():
            self._live[conversion.id] = conversion
            if conversion.state == ConversionState.CANCELLING:
                self._finish_cancelled(conversion)
                continue
            self.record(
                conversion,
                LogLine(
                    source=LogSource.SERVICE,
                    text=f"the converter restarted while this conversion was "
                    f"{conversion.state.value}; it runs again from the start",
                ),
            )
            conversion.state = ConversionState.QUEUED
            conversion.percent = 0
            self.record(conversion, Progress(stage=ConversionState.QUEUED, percent=0))
            self._schedule(conversion)
        await self._workers.warm()

    async def drain(self) -> None:
        """End every watch (callers re-attach after the restart)."""
        self._closing = True
        self._bell.ring()

    async def close(self) -> None:
        """Stop running conversions without ending them: the next start runs them again."""
        self._closing = True
        self._bell.ring()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_WAIT_S)
        await self._workers.close()
        await self.registry.close()
        self.store.close()

    # --- events

    def record(self, conversion: Conversion, payload: EventPayload) -> ConversionEvent:
        """Store an event of ``conversion`` (in its state as changed by the caller); the event
        with its sequence."""
        event = ConversionEvent(conversion_id=conversion.id, time=_now(), payload=payload)
        event = self.store.record(conversion, event)
        self._bell.ring()
        return event

    # --- requests

    async def quantization_types(self) -> dict[str, str]:
        """llama-quantize's types and descriptions, in its order (read once)."""
        if self._types is None:
            self._types = await asyncio.to_thread(quantization_type_descriptions, self.toolchain)
        return self._types

    async def list_quantization_types(self) -> QuantizationTypes:
        """Every type llama-quantize offers."""
        types = await self.quantization_types()
        return QuantizationTypes(
            types=tuple(
                QuantizationType(
                    name=name, description=description, requires_imatrix=requires_imatrix(name)
                )
                for name, description in types.items()
            ),
            llama_cpp_version=self.toolchain.version,
        )

    async def submit(self, spec: ConversionSpec, request_id: str = "") -> Conversion:
        """Accept a conversion, or find the one a previous request with ``request_id`` started.

        Raises:
            InvalidArgument, NotFound, Unimplemented: the request cannot be carried out.
            FailedPrecondition: a version it names needs its own code, which is not trusted.
            Unavailable: the registry cannot be reached to check the request.
        """
        if self._closing:
            raise Unavailable("the converter is shutting down; retry the request in a moment")
        if request_id:
            existing = self.store.find_request(request_id)
            if existing is not None:
                return existing
        spec = await validate_spec(
            self.registry,
            spec,
            set(await self.quantization_types()),
            trust_remote_code=self.settings.trust_remote_code,
        )
        conversion_id = f"cv-{uuid.uuid4().hex[:16]}"
        conversion = Conversion(
            id=conversion_id,
            request_id=request_id or conversion_id,
            spec=spec,
            state=ConversionState.QUEUED,
            create_time=_now(),
            last_event_sequence=1,
        )
        # The event keeps the record as accepted: a copy, since the record changes as it runs.
        accepted = ConversionEvent(
            conversion_id=conversion_id, time=_now(), payload=replace(conversion)
        )
        stored, created = self.store.create(conversion, accepted)
        if not created:
            return stored  # the same request_id won a race
        self._live[conversion_id] = stored
        self._schedule(stored)
        self._bell.ring()
        log.info("accepted conversion %s", conversion_id, extra={"conversion_id": conversion_id})
        return stored

    def get(self, conversion_id: str) -> Conversion:
        """One conversion.

        Raises:
            NotFound: there is no such conversion.
        """
        conversion = self.store.get(conversion_id)
        if conversion is None:
            raise NotFound(f"no conversion {conversion_id!r}", field="conversion_id")
        return conversion

    def list(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        states: Sequence[ConversionState] = (),
        source: VersionRef | None = None,
    ) -> ConversionPage:
        """A page of conversions, newest first: ``page_size`` of them (0: the default), after
        the position ``page_token`` names, only those in ``states`` (when given) and of
        ``source`` (its model, and its version when that is a number).

        Raises:
            InvalidArgument: a negative page size, or a page token the service did not issue.
        """
        size = page_size or DEFAULT_PAGE_SIZE
        if size < 0:
            raise InvalidArgument("page_size cannot be negative", field="page_size")
        size = min(size, MAX_PAGE_SIZE)
        labels = {"source_model": source.model} if source is not None and source.model else {}
        if labels and source is not None and source.version:
            labels["source_version"] = str(source.version)
        page = self.store.page(
            after=decode_position(page_token),
            states=[state.name for state in states],
            labels=labels,
            limit=size,
        )
        return ConversionPage(
            conversions=page.records,
            next_page_token=(
                encode_page_token(page.next_position) if page.next_position is not None else ""
            ),
        )

    async def watch(
        self, conversion_id: str, after_sequence: int = 0
    ) -> AsyncIterator[ConversionEvent]:
        """The conversion's events after ``after_sequence``, then new ones until it ends.

        Raises:
            NotFound: there is no such conversion.
            Unavailable: the converter is shutting down (watch again after the restart).
        """
        self.get(conversion_id)
        async for event in watch_events(
            self.store,
            self._bell,
            conversion_id,
            after=after_sequence,
            sequence_of=lambda event: event.sequence,
            closing=lambda: self._closing,
            closing_error=lambda sequence: Unavailable(
                f"the converter is shutting down; watch {conversion_id} again with "
                f"after_sequence={sequence} once it is back"
            ),
        ):
            yield event

    async def cancel(self, conversion_id: str) -> Conversion:
        """Cancel a conversion: its worker and tools are stopped, nothing is registered.

        Raises:
            NotFound: there is no such conversion.
            FailedPrecondition: it already ended.
        """
        stored = self.get(conversion_id)
        conversion = self._live.get(conversion_id, stored)
        if conversion.state in TERMINAL_STATES:
            raise FailedPrecondition(
                f"conversion {conversion_id} already ended "
                f"({conversion.state.value}); there is nothing to cancel",
                field="conversion_id",
            )
        self._cancel_requested.add(conversion_id)
        task = self._tasks.get(conversion_id)
        if task is None:
            self._finish_cancelled(conversion)
            return conversion
        if conversion.state != ConversionState.CANCELLING:
            conversion.state = ConversionState.CANCELLING
            self.record(
                conversion,
                Progress(stage=ConversionState.CANCELLING, percent=conversion.percent),
            )
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_WAIT_S)
        return self.get(conversion_id)

    # --- running

    def _schedule(self, conversion: Conversion) -> None:
        task = asyncio.create_task(self._run(conversion), name=f"conversion {conversion.id}")
        self._tasks[conversion.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(conversion.id, None))

    async def _run(self, conversion: Conversion) -> None:
        try:
            async with self._slots:
                conversion.start_time = _now()
                result = await run_conversion(
                    conversion, self._context, _EventReporter(self, conversion)
                )
        except OperationFailure as failure:
            self._finish_failed(conversion, OperationError.of(failure))
        except asyncio.CancelledError:
            if conversion.id in self._cancel_requested:
                self._finish_cancelled(conversion)
            raise
        except Exception as error:
            log.exception("conversion %s failed unexpectedly", conversion.id)
            self._finish_failed(
                conversion,
                OperationError(
                    code="internal",
                    message=f"the converter failed unexpectedly ({type(error).__name__}); see "
                    "its log",
                ),
            )
        else:
            conversion.state = ConversionState.SUCCEEDED
            conversion.percent = 100
            conversion.result = result
            conversion.end_time = _now()
            self.record(conversion, result)
            self._live.pop(conversion.id, None)
            log.info("conversion %s succeeded", conversion.id)

    def _finish_failed(self, conversion: Conversion, error: OperationError) -> None:
        conversion.failed_state = conversion.state
        conversion.state = ConversionState.FAILED
        conversion.error = error
        conversion.end_time = _now()
        self.record(conversion, error)
        self._live.pop(conversion.id, None)
        log.info("conversion %s failed: %s: %s", conversion.id, error.code, error.message)

    def _finish_cancelled(self, conversion: Conversion) -> None:
        conversion.state = ConversionState.CANCELLED
        conversion.end_time = _now()
        self.record(
            conversion, Progress(stage=ConversionState.CANCELLED, percent=conversion.percent)
        )
        self._live.pop(conversion.id, None)
        self._cancel_requested.discard(conversion.id)
        log.info("conversion %s cancelled", conversion.id)
