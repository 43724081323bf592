"""The tool work of a conversion (CONVERTING to VERIFYING), run in a worker process: the job
handed to a worker of the pool, its messages relayed as progress and log lines, its time limit
kept, its end turned into a result or an `OperationFailure`; and run again, on the inputs
already downloaded, while the worker or a tool it started is killed by a signal (the OOM
killer, a preempted node: not a failure of the input).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from pydantic import ValidationError

from forgeline_converter.conversions import ConversionState, LogSource, OperationError, Retry
from forgeline_converter.downloading import INPUTS
from forgeline_converter.run_context import Reporter, RunContext, Steps, log
from forgeline_converter.worker_pool import WorkerPool, stop_worker
from forgeline_converter.worker_process import WorkerJob, WorkerMessage, WorkerResult
from forgeline_kit.operations import OperationFailure

__all__ = ["run_worker_retrying"]

_STAGES = {
    "CONVERTING": ConversionState.CONVERTING,
    "COMPUTING_IMATRIX": ConversionState.COMPUTING_IMATRIX,
    "QUANTIZING": ConversionState.QUANTIZING,
    "VERIFYING": ConversionState.VERIFYING,
}
#: Failures of the tool work that are not the input's: run it again.
_KILLED = frozenset({"worker_killed", "tool_killed"})


async def _run_worker(
    job: WorkerJob,
    work: Path,
    steps: Steps,
    reporter: Reporter,
    pool: WorkerPool,
    deadline_s: float,
) -> WorkerResult:
    job_file = work / "job.json"
    job_file.write_text(job.model_dump_json(), encoding="utf-8")
    process = await pool.run(job_file)
    try:
        async with asyncio.timeout(deadline_s):
            failure, tail, code = await _follow_worker(process, steps, reporter)
    except TimeoutError:
        raise OperationFailure(
            "deadline_exceeded",
            f"the conversion's tool work ran past its time limit of {deadline_s:g} s and was "
            "stopped; raise FORGELINE_CONVERTER_MAX_TOOL_SECONDS for models this large",
        ) from None
    finally:
        await stop_worker(process)
    if failure is not None:
        raise OperationFailure(
            failure.code, failure.text, field=failure.field, retryable=failure.code in _KILLED
        )
    if code < 0:
        raise OperationFailure(
            "worker_killed", f"the conversion worker was killed by signal {-code}", retryable=True
        )
    if code != 0:
        raise OperationFailure(
            "internal", f"the conversion worker exited with {code}: " + "\n".join(tail[-10:])
        )
    return WorkerResult.model_validate_json(job.result_file.read_text(encoding="utf-8"))


async def _follow_worker(
    process: asyncio.subprocess.Process, steps: Steps, reporter: Reporter
) -> tuple[WorkerMessage | None, list[str], int]:
    """Relay a worker's messages until it exits: its failure message (if any), the last lines it
    wrote that were not messages, and its exit status."""
    failure: WorkerMessage | None = None
    tail: list[str] = []
    assert process.stdout is not None
    async for raw in process.stdout:
        line = raw.decode(errors="replace").rstrip()
        if not line:
            continue
        try:
            message = WorkerMessage.model_validate_json(line)
        except ValidationError:
            tail = [*tail[-20:], line]
            reporter.log(line, LogSource.STDERR)
            continue
        if message.type == "stage" and message.stage is not None:
            steps.enter(_STAGES[message.stage], message.target)
        elif message.type == "log":
            reporter.log(message.text, LogSource.STDOUT)
        else:
            failure = message
    code = await process.wait()
    return failure, tail, code


async def run_worker_retrying(
    job: WorkerJob, work: Path, steps: Steps, reporter: Reporter, context: RunContext
) -> WorkerResult:
    """The tool work, run again while its worker or a tool is killed by a signal, up to
    ``WORKER_ATTEMPTS`` runs in all; the inputs stay, what a killed run wrote is removed."""
    settings = context.settings
    attempts = settings.worker_attempts
    attempt = 1
    done = steps.done
    while True:
        try:
            return await _run_worker(
                job, work, steps, reporter, context.workers, settings.max_tool_seconds
            )
        except OperationFailure as failure:
            if failure.code not in _KILLED or attempt >= attempts:
                raise
            delay = settings.worker_retry_seconds * 2 ** (attempt - 1)
            attempt += 1
            reason = failure.message.splitlines()[0] if failure.message else failure.code
            log.warning(
                "%s; running the tool work again (attempt %d of %d) in %g s",
                reason,
                attempt,
                attempts,
                delay,
            )
            reporter.retry(
                Retry(
                    error=OperationError(code=failure.code, message=reason, retryable=True),
                    attempt=attempt,
                    max_attempts=attempts,
                    delay_seconds=delay,
                )
            )
            await asyncio.to_thread(_clear_worker_files, work)
            steps.done = done
            await asyncio.sleep(delay)


def _clear_worker_files(work: Path) -> None:
    """Remove what a killed worker left in ``work``, keeping the downloaded inputs."""
    for entry in work.iterdir():
        if entry.name in INPUTS:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
