"""One accepted conversion, run from start to end: download from the registry, the tool work in a
worker process, then every output registered as a child version.

Nothing is registered until every output is verified; if registering one fails, the versions
already registered by this run are deleted again. The work directory is removed however the run
ends (success, failure, cancellation). A worker (or a tool it started) killed by a signal, which
is the OOM killer or a preempted node rather than the input, is run again on the inputs already
downloaded, up to ``WORKER_ATTEMPTS`` runs, each retry an event.

Each stage has its module: `downloading`, `tool_work` (with `worker_pool`), `registering`; what
they share (the context, the reporter, the failure) is in `run_context`.
"""

from __future__ import annotations

import asyncio
import shutil
import time

from forgeline_converter.conversions import Conversion, ConversionResult
from forgeline_converter.downloading import download_inputs
from forgeline_converter.registering import register_outputs
from forgeline_converter.run_context import Reporter, RunContext, Steps
from forgeline_converter.tool_work import run_worker_retrying

__all__ = ["run_conversion"]


async def run_conversion(
    conversion: Conversion, context: RunContext, reporter: Reporter
) -> ConversionResult:
    """Run ``conversion`` to its result.

    Raises:
        OperationFailure: it failed; nothing of it is registered.
        asyncio.CancelledError: it was cancelled; the worker is stopped, nothing registered.
    """
    work = context.settings.work_dir.absolute() / conversion.id
    shutil.rmtree(work, ignore_errors=True)  # a run before a restart may have left files
    work.mkdir(parents=True)
    steps = Steps(conversion.spec, reporter)
    timings: dict[str, float] = {}
    try:
        started = time.monotonic()
        job, evaluation_sha256 = await download_inputs(conversion, context, work, steps)
        timings["download"] = time.monotonic() - started
        started = time.monotonic()
        result = await run_worker_retrying(job, work, steps, reporter, context)
        timings["worker"] = time.monotonic() - started
        timings |= result.timings
        started = time.monotonic()
        outputs = await register_outputs(conversion, context, result, steps, evaluation_sha256)
        timings["register"] = time.monotonic() - started
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
    return ConversionResult(
        outputs=tuple(outputs), llama_cpp_version=result.llamacpp_version, timings=timings
    )
