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
from collections.abc import AsyncIterator

from google.protobuf import timestamp_pb2

from forgeline_converter.conversion_run import run_conversion
from forgeline_converter.llamacpp.tools import (
    quantization_type_descriptions,
    requires_imatrix,
)
from forgeline_converter.run_context import Reporter, RunContext
from forgeline_converter.settings import ConverterSettings
from forgeline_converter.store import TERMINAL_STATES, ConversionStore, state_name
from forgeline_converter.validation import validate_spec
from forgeline_converter.worker_pool import WorkerPool
from forgeline_kit.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.operations import ChangeBell, OperationFailure, watch_events
from forgeline_kit.operations.page_tokens import decode_position, encode_page_token
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.converter.v1 import converter_pb2 as pb
from forgeline_registry_client.client import RegistryClient

__all__ = ["Converter"]

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# How long CancelConversion waits for the tools to stop before answering CANCELLING.
CANCEL_WAIT_S = 30.0
# How long a shutdown waits for running conversions to stop their workers.
SHUTDOWN_WAIT_S = 15.0


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


class _EventReporter(Reporter):
    """Records a run's reports as events of its conversion."""

    def __init__(self, converter: Converter, conversion: pb.Conversion) -> None:
        self.converter = converter
        self.conversion = conversion

    def progress(
        self,
        stage: pb.ConversionState.ValueType,
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
            progress=pb.Progress(
                stage=stage,
                percent=percent,
                target=target,
                bytes_done=bytes_done,
                bytes_total=bytes_total,
            ),
        )

    def log(self, text: str, source: common_pb2.LogSource.ValueType) -> None:
        self.converter.record(self.conversion, log=common_pb2.LogLine(source=source, text=text))

    def retry(self, retry: common_pb2.Retry) -> None:
        self.converter.record(self.conversion, retry=retry)


class Converter:
    """Conversions: accepted, queued, run, watched, cancelled, resumed after restarts."""

    def __init__(
        self,
        settings: ConverterSettings,
        store: ConversionStore,
        registry: RegistryClient,
        toolchain: Toolchain,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.toolchain = toolchain
        self._workers = WorkerPool(settings.llamacpp_home)
        self._context = RunContext(settings, registry, toolchain.version, self._workers)
        self._slots = asyncio.Semaphore(settings.max_concurrent_conversions)
        self._live: dict[str, pb.Conversion] = {}
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
            if conversion.state == pb.CONVERSION_STATE_CANCELLING:
                self._finish_cancelled(conversion)
                continue
            state = pb.ConversionState.Name(conversion.state)
            self.record(
                conversion,
                log=common_pb2.LogLine(
                    source=common_pb2.LOG_SOURCE_SERVICE,
                    text=f"the converter restarted while this conversion was {state}; it runs "
                    "again from the start",
                ),
            )
            conversion.state = pb.CONVERSION_STATE_QUEUED
            conversion.percent = 0
            self.record(
                conversion, progress=pb.Progress(stage=pb.CONVERSION_STATE_QUEUED, percent=0)
            )
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

    def record(self, conversion: pb.Conversion, **payload: object) -> pb.ConversionEvent:
        """Store an event of ``conversion`` (in its state as changed by the caller)."""
        event = pb.ConversionEvent(conversion_id=conversion.id, time=_now(), **payload)  # type: ignore[arg-type]
        self.store.record(conversion, event)
        self._bell.ring()
        return event

    # --- requests

    async def quantization_types(self) -> dict[str, str]:
        """llama-quantize's types and descriptions, in its order (read once)."""
        if self._types is None:
            self._types = await asyncio.to_thread(quantization_type_descriptions, self.toolchain)
        return self._types

    async def list_quantization_types(self) -> pb.ListQuantizationTypesResponse:
        """Every type llama-quantize offers."""
        types = await self.quantization_types()
        return pb.ListQuantizationTypesResponse(
            types=[
                pb.QuantizationType(
                    name=name, description=description, requires_imatrix=requires_imatrix(name)
                )
                for name, description in types.items()
            ],
            llama_cpp_version=self.toolchain.version,
        )

    async def submit(self, request: pb.ConvertRequest) -> pb.Conversion:
        """Accept a conversion, or find the one a previous request with its id started.

        Raises:
            InvalidArgument, NotFound, Unimplemented: the request cannot be carried out.
            FailedPrecondition: a version it names needs its own code, which is not trusted.
            Unavailable: the registry cannot be reached to check the request.
        """
        if self._closing:
            raise Unavailable("the converter is shutting down; retry the request in a moment")
        if request.request_id:
            existing = self.store.find_request(request.request_id)
            if existing is not None:
                return existing
        spec = pb.ConversionSpec()
        spec.CopyFrom(request.spec)
        await validate_spec(
            self.registry,
            spec,
            set(await self.quantization_types()),
            trust_remote_code=self.settings.trust_remote_code,
        )
        conversion_id = f"cv-{uuid.uuid4().hex[:16]}"
        conversion = pb.Conversion(
            id=conversion_id,
            request_id=request.request_id or conversion_id,
            spec=spec,
            state=pb.CONVERSION_STATE_QUEUED,
            create_time=_now(),
            last_event_sequence=1,
        )
        accepted = pb.ConversionEvent(conversion_id=conversion_id, time=_now(), accepted=conversion)
        stored, created = self.store.create(conversion, accepted)
        if not created:
            return stored  # the same request_id won a race
        self._live[conversion_id] = stored
        self._schedule(stored)
        self._bell.ring()
        log.info("accepted conversion %s", conversion_id, extra={"conversion_id": conversion_id})
        return stored

    def get(self, conversion_id: str) -> pb.Conversion:
        """One conversion.

        Raises:
            NotFound: there is no such conversion.
        """
        conversion = self.store.get(conversion_id)
        if conversion is None:
            raise NotFound(f"no conversion {conversion_id!r}", field="conversion_id")
        return conversion

    def list(self, request: pb.ListConversionsRequest) -> pb.ListConversionsResponse:
        """A page of conversions, newest first."""
        size = request.page_size or DEFAULT_PAGE_SIZE
        if size < 0:
            raise InvalidArgument("page_size cannot be negative", field="page_size")
        size = min(size, MAX_PAGE_SIZE)
        source = request.source
        labels = {"source_model": source.model} if source.model else {}
        if source.model and source.WhichOneof("selector") == "version" and source.version:
            labels["source_version"] = str(source.version)
        page = self.store.page(
            after=decode_position(request.page_token),
            states=[state_name(state) for state in request.states],
            labels=labels,
            limit=size,
        )
        return pb.ListConversionsResponse(
            conversions=page.records,
            next_page_token=(
                encode_page_token(page.next_position) if page.next_position is not None else ""
            ),
        )

    async def watch(
        self, conversion_id: str, after_sequence: int = 0
    ) -> AsyncIterator[pb.ConversionEvent]:
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

    async def cancel(self, conversion_id: str) -> pb.Conversion:
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
                f"({pb.ConversionState.Name(conversion.state)}); there is nothing to cancel",
                field="conversion_id",
            )
        self._cancel_requested.add(conversion_id)
        task = self._tasks.get(conversion_id)
        if task is None:
            self._finish_cancelled(conversion)
            return conversion
        if conversion.state != pb.CONVERSION_STATE_CANCELLING:
            conversion.state = pb.CONVERSION_STATE_CANCELLING
            self.record(
                conversion,
                progress=pb.Progress(
                    stage=pb.CONVERSION_STATE_CANCELLING, percent=conversion.percent
                ),
            )
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_WAIT_S)
        return self.get(conversion_id)

    # --- running

    def _schedule(self, conversion: pb.Conversion) -> None:
        task = asyncio.create_task(self._run(conversion), name=f"conversion {conversion.id}")
        self._tasks[conversion.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(conversion.id, None))

    async def _run(self, conversion: pb.Conversion) -> None:
        try:
            async with self._slots:
                conversion.start_time.CopyFrom(_now())
                result = await run_conversion(
                    conversion, self._context, _EventReporter(self, conversion)
                )
        except OperationFailure as failure:
            self._finish_failed(conversion, failure.to_proto())
        except asyncio.CancelledError:
            if conversion.id in self._cancel_requested:
                self._finish_cancelled(conversion)
            raise
        except Exception as error:
            log.exception("conversion %s failed unexpectedly", conversion.id)
            self._finish_failed(
                conversion,
                common_pb2.OperationError(
                    code="internal",
                    message=f"the converter failed unexpectedly ({type(error).__name__}); see "
                    "its log",
                ),
            )
        else:
            conversion.state = pb.CONVERSION_STATE_SUCCEEDED
            conversion.percent = 100
            conversion.result.CopyFrom(result)
            conversion.end_time.CopyFrom(_now())
            self.record(conversion, result=result)
            self._live.pop(conversion.id, None)
            log.info("conversion %s succeeded", conversion.id)

    def _finish_failed(self, conversion: pb.Conversion, error: common_pb2.OperationError) -> None:
        conversion.failed_state = conversion.state
        conversion.state = pb.CONVERSION_STATE_FAILED
        conversion.error.CopyFrom(error)
        conversion.end_time.CopyFrom(_now())
        self.record(conversion, error=error)
        self._live.pop(conversion.id, None)
        log.info("conversion %s failed: %s: %s", conversion.id, error.code, error.message)

    def _finish_cancelled(self, conversion: pb.Conversion) -> None:
        conversion.state = pb.CONVERSION_STATE_CANCELLED
        conversion.end_time.CopyFrom(_now())
        self.record(
            conversion,
            progress=pb.Progress(stage=pb.CONVERSION_STATE_CANCELLED, percent=conversion.percent),
        )
        self._live.pop(conversion.id, None)
        self._cancel_requested.discard(conversion.id)
        log.info("conversion %s cancelled", conversion.id)
