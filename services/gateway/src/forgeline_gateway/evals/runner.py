"""Running an eval run in the background: each row sampled (``completions``: a chat completion
from the deployed model; ``jsonl``: the row's own ``sample``), graded by every testing criterion,
and its output item stored with the run's counts, one row at a time, several rows at once.

* A row the backend refuses (a 400: the prompt is too long, say) is an errored output item;
  the run goes on.
* A busy deployment (429) is waited for; a backend that cannot be reached, fails or does not
  answer in time is tried again (`attempts`, with backoff), then the run ends ``failed`` with the
  output items done so far kept. So does a model that is no longer deployed.
* A run cancelled by its user ends ``canceled``, its output items kept. A gateway that stops
  leaves its runs as they are (``in_progress``); the next one resumes them from the rows that
  have no output item yet (`EvalService.start`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from forgeline_gateway.evals.graders import Grade, Grader, build_graders
from forgeline_gateway.evals.records import (
    EvalRecord,
    OutputRecord,
    ResultRecord,
    RunError,
    RunRecord,
    SampleRecord,
)
from forgeline_gateway.evals.rows import Row
from forgeline_gateway.evals.sampling import (
    Completion,
    Prompt,
    Sampler,
    check_sampling_params,
    sample_namespace,
)
from forgeline_gateway.evals.store import EvalStore
from forgeline_gateway.evals.templates import MissingVariable
from forgeline_kit.errors import (
    DeadlineExceeded,
    ForgelineError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    http_status_for,
)
from forgeline_kit.leases import LeasedTasks

__all__ = ["RunExecutor", "output_id"]

log = logging.getLogger(__name__)

#: Rows sampled and graded at once in one run.
CONCURRENCY: Final = 8
#: How long a run waits for a busy deployment (429s) before it fails.
BUSY_WAIT_SECONDS: Final = 600.0


def output_id(run_id: str, position: int) -> str:
    """The id of a run's output item for the row at `position` (the same after a resume)."""
    digest = hashlib.sha256(f"{run_id}/{position}".encode()).hexdigest()[:32]
    return f"outputitem_{digest}"


class _RunFailed(Exception):  # noqa: N818 (it ends the run, it is no error of the code)
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.error = RunError(code=code, message=message)


class _RunStopped(Exception):  # noqa: N818
    """The run was finished by someone else (cancelled) while rows were being done."""


@dataclass(frozen=True)
class _Plan:
    """What a run does with each row."""

    graders: Sequence[Grader]
    model: str | None
    prompt: Prompt | None
    params: Mapping[str, Any]


class RunExecutor:
    """The background tasks of the runs under way in this gateway, each under the run's lease
    (`forgeline_kit.leases.LeasedTasks`), so replicas sharing a database execute each run once."""

    def __init__(
        self,
        store: EvalStore,
        sampler: Sampler,
        *,
        concurrency: int = CONCURRENCY,
        attempts: int = 3,
        retry_seconds: float = 1.0,
    ) -> None:
        self.store = store
        self.sampler = sampler
        self.concurrency = concurrency
        self.attempts = attempts
        self.retry_seconds = retry_seconds
        self.tasks = LeasedTasks(
            store.leases, "eval_run", run=self._execute, unfinished=self._unfinished
        )

    async def start(self) -> None:
        """Resume the unfinished runs no other replica executes; from then on, take over those
        whose replica dies."""
        await self.tasks.start()

    async def launch(self, run_id: str) -> None:
        """Start (or resume) the run `run_id` in the background, unless another replica
        executes it."""
        if self.tasks.running(run_id) is None and await self.tasks.take(run_id):
            self.tasks.spawn(run_id)

    async def stop(self, run_id: str) -> None:
        """Stop the run's task, if it has one here, and wait until it has stopped; the run
        has ended (cancelled, deleted), so its lease goes too."""
        await self.tasks.stop(run_id, release=True)

    async def close(self) -> None:
        """Stop every task, leaving the runs unfinished for the next gateway to resume."""
        await self.tasks.close()

    async def wait(self, run_id: str) -> None:
        """Wait until the run's task ends (a fine-tuning job's quality check; tests)."""
        task = self.tasks.running(run_id)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)

    async def _unfinished(self) -> list[str]:
        return [run.id for run in await self.store.run(self.store.unfinished_runs)]

    # --- one run --------------------------------------------------------------------------

    async def _execute(self, run_id: str) -> None:
        try:
            await self._run(run_id)
        except asyncio.CancelledError:
            raise
        except _RunStopped:
            pass
        except _RunFailed as failure:
            await self._finish(run_id, "failed", failure.error)
        except Exception:
            log.exception("eval run failed unexpectedly", extra={"run_id": run_id})
            error = RunError(
                code="internal_error",
                message="The run failed unexpectedly; the gateway's log says why.",
            )
            await self._finish(run_id, "failed", error)

    async def _run(self, run_id: str) -> None:
        store = self.store
        run = await store.run(lambda: store.get_run(run_id))
        if run is None or run.terminal:
            return
        found = await store.run(lambda: store.get_eval(run.eval_id))
        if found is None:
            raise _RunFailed("eval_not_found", f"The eval '{run.eval_id}' no longer exists.")
        plan = self._plan(found, run)
        if run.status == "queued":
            started = run.model_copy(update={"status": "in_progress"})
            if not await store.run(lambda: store.update_run(started)):
                return
        pending = await store.run(lambda: store.pending_rows(run_id))
        rows: Iterator[tuple[int, Row]] = iter(pending)

        async def worker() -> None:
            # One shared iterator: each row is taken by exactly one worker.
            for position, row in rows:
                output = await self._output(run, plan, position, row)
                if await store.run(functools.partial(store.record_output, output)) is None:
                    raise _RunStopped

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(max(1, min(self.concurrency, len(pending)))):
                    group.create_task(worker())
        except BaseExceptionGroup as group:
            # One cause is enough: the first failure (or stop) of any worker ends the run.
            for kind in (_RunFailed, _RunStopped):
                match = group.subgroup(kind)
                if match is not None:
                    raise _first(match) from None
            raise
        await self._finish(run_id, "completed", None)

    def _plan(self, found: EvalRecord, run: RunRecord) -> _Plan:
        try:
            graders = build_graders(found.testing_criteria, param="testing_criteria")
            source = run.data_source
            prompt: Prompt | None = None
            params: dict[str, Any] = {}
            if source.get("type") == "completions":
                prompt = Prompt.of(
                    source.get("input_messages") or {}, param="data_source.input_messages"
                )
                params = check_sampling_params(
                    source.get("sampling_params") or {}, param="data_source.sampling_params"
                )
        except InvalidArgument as error:
            # Checked when the run was made; a gateway resuming it may lack something (WordNet).
            raise _RunFailed("invalid_eval", error.message) from None
        return _Plan(graders, run.model, prompt, params)

    async def _output(self, run: RunRecord, plan: _Plan, position: int, row: Row) -> OutputRecord:
        if plan.model is None or plan.prompt is None:
            sample = _given_sample(row)
            namespaces = {"item": row.item, "sample": row.sample}
            grades = await asyncio.to_thread(_grade_all, plan.graders, namespaces)
            return _output(run, position, row, sample, grades)
        try:
            messages = plan.prompt.render(row.item)
        except (MissingVariable, ValueError) as error:
            sample = SampleRecord(error=RunError(code="invalid_item", message=str(error)))
            return _output(run, position, row, sample, [])
        answer = await self._complete(plan.model, messages, plan.params)
        sample = SampleRecord(
            input=tuple(messages),
            model=plan.model,
            temperature=plan.params.get("temperature"),
            max_completion_tokens=plan.params.get("max_completion_tokens"),
            top_p=plan.params.get("top_p"),
            seed=plan.params.get("seed"),
        )
        if isinstance(answer, RunError):
            return _output(run, position, row, sample.model_copy(update={"error": answer}), [])
        sample = sample.model_copy(
            update={
                "output": ({"role": "assistant", "content": answer.text},),
                "finish_reason": answer.finish_reason,
                "model": answer.model,
                "prompt_tokens": answer.prompt_tokens,
                "completion_tokens": answer.completion_tokens,
                "total_tokens": answer.total_tokens,
                "cached_tokens": answer.cached_tokens,
            }
        )
        namespaces = {"item": row.item, "sample": sample_namespace(answer)}
        grades = await asyncio.to_thread(_grade_all, plan.graders, namespaces)
        return _output(run, position, row, sample, grades)

    async def _complete(
        self, model: str, messages: list[dict[str, Any]], params: Mapping[str, Any]
    ) -> Completion | RunError:
        """The model's answer, or the error that is the row's own; waits out a busy deployment
        and retries a failing backend, then gives up on the run (`_RunFailed`)."""
        failures = 0
        busy_since: float | None = None
        while True:
            try:
                return await self.sampler.complete(model, messages, params)
            except InvalidArgument as error:
                return RunError(code="invalid_request", message=error.message)
            except NotFound as error:
                raise _RunFailed("model_not_found", error.message) from None
            except ResourceExhausted as error:
                busy_since = busy_since or time.monotonic()
                if time.monotonic() - busy_since > BUSY_WAIT_SECONDS:
                    raise _RunFailed("rate_limit_exceeded", error.message) from None
                await asyncio.sleep(float(getattr(error, "retry_after", 1) or 1))
            except (Unavailable, DeadlineExceeded) as error:
                failures += 1
                if failures >= self.attempts:
                    raise _RunFailed(
                        _code(error),
                        f"{error.message} The run stopped after {failures} attempts at one "
                        "row; the output items done so far are kept.",
                    ) from None
                await asyncio.sleep(self.retry_seconds * 2 ** (failures - 1))

    async def _finish(self, run_id: str, status: str, error: RunError | None) -> None:
        """End a run that is still unfinished, its counts taken afresh from its output items."""
        store = self.store

        def finish() -> None:
            run = store.get_run(run_id)
            if run is None or run.terminal:
                return
            found = store.get_eval(run.eval_id)
            names = found.criteria_names if found else []
            done = run.recounted(names, store.outputs(run_id)).model_copy(
                update={"status": status, "error": error, "finished_at": int(time.time())}
            )
            store.update_run(done)

        await store.run(finish)


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


def _code(error: ForgelineError) -> str:
    """The OpenAI error code a client would have got for `error` (as `forgeline_gateway.errors`
    names them)."""
    code = getattr(error, "openai_code", None)
    if isinstance(code, str):
        return code
    return {502: "bad_gateway", 504: "backend_timeout"}.get(
        http_status_for(error), "backend_unavailable"
    )


def _given_sample(row: Row) -> SampleRecord:
    """The sample record of a row that brings its own answer."""
    if row.sample is None:
        return SampleRecord()
    text = row.sample.get("output_text")
    model = row.sample.get("model")
    finish = row.sample.get("finish_reason")
    return SampleRecord(
        output=({"role": "assistant", "content": text},) if isinstance(text, str) else (),
        model=model if isinstance(model, str) else None,
        finish_reason=finish if isinstance(finish, str) else None,
    )


def _grade_all(graders: Sequence[Grader], namespaces: Mapping[str, Any]) -> list[Grade]:
    grades: list[Grade] = []
    for grader in graders:
        try:
            grades.append(grader.grade(namespaces))
        except MissingVariable as error:
            grades.append(Grade(grader.name, grader.type, 0.0, False, error=str(error)))
        except Exception as error:
            log.exception("grader failed", extra={"grader": grader.name})
            grades.append(
                Grade(grader.name, grader.type, 0.0, False, error=f"the grader failed: {error}")
            )
    return grades


def _output(
    run: RunRecord, position: int, row: Row, sample: SampleRecord, grades: Sequence[Grade]
) -> OutputRecord:
    if sample.error is not None or any(grade.error for grade in grades):
        status = "error"
    elif all(grade.passed for grade in grades):
        status = "pass"
    else:
        status = "fail"
    return OutputRecord(
        id=output_id(run.id, position),
        run_id=run.id,
        eval_id=run.eval_id,
        created_at=int(time.time()),
        index=position,
        item=row.item,
        status=status,
        sample=sample,
        results=tuple(
            ResultRecord(name=g.name, type=g.type, score=g.score, passed=g.passed, error=g.error)
            for g in grades
        ),
    )
